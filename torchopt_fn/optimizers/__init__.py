"""Named optimizers: each a `chain` of public transforms, with optax 0.2.8's names and signature.

Every optimizer returns a `GradientTransformation` whose updates are already negated, so
``params = apply_updates(params, updates)`` descends. One private module per family; two
optax 0.2.8 bugs are not copied, see `rprop` and `adadelta`.
"""

from torchopt_fn.optimizers import _adam, _factored, _layerwise, _lbfgs, _rms, _sgd, _sign
from torchopt_fn.optimizers._adam import *
from torchopt_fn.optimizers._factored import *
from torchopt_fn.optimizers._layerwise import *
from torchopt_fn.optimizers._lbfgs import *
from torchopt_fn.optimizers._rms import *
from torchopt_fn.optimizers._sgd import *
from torchopt_fn.optimizers._sign import *

__all__ = [
    *_sgd.__all__,
    *_sign.__all__,
    *_adam.__all__,
    *_rms.__all__,
    *_layerwise.__all__,
    *_factored.__all__,
    *_lbfgs.__all__,
]
