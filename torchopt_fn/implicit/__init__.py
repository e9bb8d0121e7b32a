"""Implicit differentiation: gradients of the solution of an inner problem (a minimiser, a
root, a fixed point) through the implicit function theorem, never through the solver's
iterations, and the matrix-free linear solvers it needs (JAXopt's and TorchOpt's
``custom_root``, on `torch.func`)."""

from torchopt_fn.implicit import _root, _solvers
from torchopt_fn.implicit._root import *
from torchopt_fn.implicit._solvers import *

__all__ = [*_root.__all__, *_solvers.__all__]
