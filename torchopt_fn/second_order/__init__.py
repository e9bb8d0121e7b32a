"""Curvature on `torch.func`: Hessian-vector products, Hessian and Fisher diagonals, the
Hutchinson estimator, power iteration and inverse matrix roots (optax's ``second_order``
module and ``power_iteration``/``matrix_inverse_pth_root``)."""

from torchopt_fn.second_order import _curvature
from torchopt_fn.second_order._curvature import *

__all__ = [*_curvature.__all__]
