"""Wrappers that change how any transformation is applied."""

from torchopt_fn.wrappers import _inject
from torchopt_fn.wrappers._inject import *

__all__ = [*_inject.__all__]
