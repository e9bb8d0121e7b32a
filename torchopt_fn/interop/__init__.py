"""torch.optim interoperability: `Optimizer` (any transformation as a torch optimizer) and
`from_torch` (a torch optimizer's algorithm as a transformation), `TrainStep` (a module's
whole training step as one compiled graph)."""

from torchopt_fn.interop._from_torch import from_torch
from torchopt_fn.interop._optimizer import Optimizer
from torchopt_fn.interop._train_step import TrainStep

__all__ = ["Optimizer", "TrainStep", "from_torch"]
