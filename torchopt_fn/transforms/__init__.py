"""Gradient transformations: the building blocks that `chain` composes into optimizers.

One private module per family; each module's ``__all__`` is the public list.
"""

from torchopt_fn.transforms import (
    _adam,
    _adaptive,
    _clip,
    _factored,
    _misc,
    _momentum,
    _scale,
    _special,
    _torch_compat,
    _weight_decay,
)
from torchopt_fn.transforms._adam import *
from torchopt_fn.transforms._adaptive import *
from torchopt_fn.transforms._clip import *
from torchopt_fn.transforms._factored import *
from torchopt_fn.transforms._misc import *
from torchopt_fn.transforms._momentum import *
from torchopt_fn.transforms._scale import *
from torchopt_fn.transforms._special import *
from torchopt_fn.transforms._torch_compat import *
from torchopt_fn.transforms._weight_decay import *

__all__ = [
    *_adam.__all__,
    *_adaptive.__all__,
    *_clip.__all__,
    *_factored.__all__,
    *_misc.__all__,
    *_momentum.__all__,
    *_scale.__all__,
    *_special.__all__,
    *_torch_compat.__all__,
    *_weight_decay.__all__,
]
