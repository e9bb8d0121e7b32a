"""Named optimizers: each is a `chain` of public transforms and holds no maths of its own."""

from torchopt_fn.optimizers import _alias
from torchopt_fn.optimizers._alias import *

__all__ = [*_alias.__all__]
