"""torch.optim interoperability: `Optimizer` (any transformation as a torch optimizer) and
`from_torch` (a torch optimizer's algorithm as a transformation), `TrainStep` (a module's
whole training step as one compiled graph), and meta-learning over a module: `MetaOptimizer`
(differentiable inner steps), `extract_state` / `recover_state` / `detach_`."""

from torchopt_fn.interop._from_torch import from_torch
from torchopt_fn.interop._meta import MetaOptimizer, detach_, extract_state, recover_state
from torchopt_fn.interop._optimizer import Optimizer
from torchopt_fn.interop._train_step import TrainStep

__all__ = [
    "MetaOptimizer",
    "Optimizer",
    "TrainStep",
    "detach_",
    "extract_state",
    "from_torch",
    "recover_state",
]
