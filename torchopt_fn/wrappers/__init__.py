"""Wrappers that change how any transformation is applied: hyperparameters in the state,
accumulation, skipping, conditions, Lookahead, monitoring, a flat layout, 8-bit state."""

from torchopt_fn.wrappers import (
    _accumulate,
    _conditional,
    _inject,
    _layout,
    _lookahead,
    _monitor,
    _quantized,
)
from torchopt_fn.wrappers._accumulate import *
from torchopt_fn.wrappers._conditional import *
from torchopt_fn.wrappers._inject import *
from torchopt_fn.wrappers._layout import *
from torchopt_fn.wrappers._lookahead import *
from torchopt_fn.wrappers._monitor import *
from torchopt_fn.wrappers._quantized import *

__all__ = [
    *_accumulate.__all__,
    *_conditional.__all__,
    *_inject.__all__,
    *_layout.__all__,
    *_lookahead.__all__,
    *_monitor.__all__,
    *_quantized.__all__,
]
