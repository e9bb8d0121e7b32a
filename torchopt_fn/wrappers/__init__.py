"""Wrappers that change how any transformation is applied."""

from torchopt_fn.wrappers import _inject
from torchopt_fn.wrappers._inject import *  # noqa: F403

__all__ = [*_inject.__all__]
