"""torch.optim interoperability: `Optimizer` (any transformation as a torch optimizer) and
`from_torch` (a torch optimizer's algorithm as a transformation)."""

from torchopt_fn.interop._from_torch import from_torch
from torchopt_fn.interop._optimizer import Optimizer

__all__ = ["Optimizer", "from_torch"]
