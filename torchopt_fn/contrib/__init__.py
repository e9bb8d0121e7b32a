"""Research optimizers, as in ``optax.contrib``: ``tf.contrib.<name>``, optax's names,
arguments and defaults, checked against optax's float64 trajectories."""

from torchopt_fn.contrib import (
    _ademamix,
    _adopt,
    _cocob,
    _dog,
    _madgrad,
    _prodigy,
    _schedule_free,
)
from torchopt_fn.contrib._ademamix import *
from torchopt_fn.contrib._adopt import *
from torchopt_fn.contrib._cocob import *
from torchopt_fn.contrib._dog import *
from torchopt_fn.contrib._madgrad import *
from torchopt_fn.contrib._prodigy import *
from torchopt_fn.contrib._schedule_free import *

__all__ = [
    *_adopt.__all__,
    *_ademamix.__all__,
    *_cocob.__all__,
    *_dog.__all__,
    *_madgrad.__all__,
    *_prodigy.__all__,
    *_schedule_free.__all__,
]
