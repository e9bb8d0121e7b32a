"""Euclidean projections onto convex sets, for projected gradient methods (optax's
``optax.projections``): apply one to the params after `apply_updates`."""

from torchopt_fn.projections import _projections
from torchopt_fn.projections._projections import *

__all__ = [*_projections.__all__]
