"""Gradient transformations: the building blocks that `chain` composes into optimizers.

One private module per concept, as optax names them; each module's ``__all__`` is its public
list:

| module | what |
| --- | --- |
| `_scaling` | constants, learning rates, schedules, the Polyak step |
| `_accumulation` | momentum (`trace`), `ema`, optimistic gradients |
| `_adam` | Adam, AMSGrad, Adamax, RAdam, AdaBelief, Yogi, Adan |
| `_rms` | RMSProp, centred RMSProp, Adagrad, Adadelta |
| `_sign` | signSGD, Lion, Rprop |
| `_layerwise` | trust ratios, NovoGrad, parameter-block scaling, centralization |
| `_factored` | Adafactor's factored RMS, SM3 |
| `_adding` | decayed weights, gradient noise |
| `_clipping` | clipping by value, global norm, block RMS, AGC |
| `_constraining` | non-negative parameters, NaN-free updates |
| `_torch_parity` | torch.optim's maths where optax's differs |
| `_torch_matrix` | torch.optim's matrix-shaped methods: Adafactor, Muon |
| `_lbfgs` | L-BFGS's inverse-Hessian preconditioner |
| `_linesearch` | backtracking and zoom line searches |
"""

from torchopt_fn.transforms import (
    _accumulation,
    _adam,
    _adding,
    _clipping,
    _constraining,
    _factored,
    _layerwise,
    _lbfgs,
    _linesearch,
    _rms,
    _scaling,
    _sign,
    _torch_matrix,
    _torch_parity,
)
from torchopt_fn.transforms._accumulation import *
from torchopt_fn.transforms._adam import *
from torchopt_fn.transforms._adding import *
from torchopt_fn.transforms._clipping import *
from torchopt_fn.transforms._constraining import *
from torchopt_fn.transforms._factored import *
from torchopt_fn.transforms._layerwise import *
from torchopt_fn.transforms._lbfgs import *
from torchopt_fn.transforms._linesearch import *
from torchopt_fn.transforms._rms import *
from torchopt_fn.transforms._scaling import *
from torchopt_fn.transforms._sign import *
from torchopt_fn.transforms._torch_matrix import *
from torchopt_fn.transforms._torch_parity import *

__all__ = [
    *_scaling.__all__,
    *_accumulation.__all__,
    *_adam.__all__,
    *_rms.__all__,
    *_sign.__all__,
    *_layerwise.__all__,
    *_factored.__all__,
    *_adding.__all__,
    *_clipping.__all__,
    *_constraining.__all__,
    *_lbfgs.__all__,
    *_linesearch.__all__,
    *_torch_parity.__all__,
    *_torch_matrix.__all__,
]
