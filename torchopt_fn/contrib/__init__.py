"""Research optimizers, as in ``optax.contrib``: ``tf.contrib.<name>``, optax's names,
arguments and defaults, checked against optax's float64 trajectories."""

from torchopt_fn.contrib import (
    _acprop,
    _ademamix,
    _adopt,
    _caution,
    _cocob,
    _complex_valued,
    _dadapt_adamw,
    _dog,
    _galore,
    _laprop,
    _madgrad,
    _mars,
    _mechanic,
    _momo,
    _muon,
    _privacy,
    _prodigy,
    _psgd,
    _reduce_on_plateau,
    _sam,
    _schedule_free,
    _shampoo,
    _soap,
    _sophia,
)
from torchopt_fn.contrib._acprop import *
from torchopt_fn.contrib._ademamix import *
from torchopt_fn.contrib._adopt import *
from torchopt_fn.contrib._caution import *
from torchopt_fn.contrib._cocob import *
from torchopt_fn.contrib._complex_valued import *
from torchopt_fn.contrib._dadapt_adamw import *
from torchopt_fn.contrib._dog import *
from torchopt_fn.contrib._galore import *
from torchopt_fn.contrib._laprop import *
from torchopt_fn.contrib._madgrad import *
from torchopt_fn.contrib._mars import *
from torchopt_fn.contrib._mechanic import *
from torchopt_fn.contrib._momo import *
from torchopt_fn.contrib._muon import *
from torchopt_fn.contrib._privacy import *
from torchopt_fn.contrib._prodigy import *
from torchopt_fn.contrib._psgd import *
from torchopt_fn.contrib._reduce_on_plateau import *
from torchopt_fn.contrib._sam import *
from torchopt_fn.contrib._schedule_free import *
from torchopt_fn.contrib._shampoo import *
from torchopt_fn.contrib._soap import *
from torchopt_fn.contrib._sophia import *

__all__ = [
    *_acprop.__all__,
    *_ademamix.__all__,
    *_adopt.__all__,
    *_caution.__all__,
    *_cocob.__all__,
    *_complex_valued.__all__,
    *_dadapt_adamw.__all__,
    *_dog.__all__,
    *_galore.__all__,
    *_laprop.__all__,
    *_madgrad.__all__,
    *_mars.__all__,
    *_mechanic.__all__,
    *_momo.__all__,
    *_muon.__all__,
    *_privacy.__all__,
    *_psgd.__all__,
    *_prodigy.__all__,
    *_reduce_on_plateau.__all__,
    *_sam.__all__,
    *_shampoo.__all__,
    *_soap.__all__,
    *_schedule_free.__all__,
    *_sophia.__all__,
]
