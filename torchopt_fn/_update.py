"""Applying updates to parameters."""

from __future__ import annotations

import torch

from torchopt_fn import _tree
from torchopt_fn._base import Params, Updates

__all__ = ["apply_updates", "apply_updates_"]


def apply_updates(params: Params, updates: Updates) -> Params:
    """Return ``params + updates``, each result cast back to its parameter's dtype.

    Pure: nothing is modified. A `None` update leaves its parameter as it is.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.apply_updates({"w": torch.ones(2)}, {"w": torch.tensor([0.5, -1.0])})
        {'w': tensor([1.5000, 0.0000])}
    """
    (us, ps), _, (p_leaves,), rebuild = _tree._live(updates, params, what="apply_updates")
    new = _tree._Ops(ps).add(ps, _tree.cast_like(us, ps))
    return rebuild(new, p_leaves)


def apply_updates_(params: Params, updates: Updates) -> Params:
    """Add ``updates`` into ``params`` in place (the adapter's variant) and return ``params``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> p = {"w": torch.ones(2)}
        >>> _ = tf.apply_updates_(p, {"w": torch.tensor([0.5, -1.0])})
        >>> p["w"]
        tensor([1.5000, 0.0000])
    """
    (us, ps), _, _, _ = _tree._live(updates, params, what="apply_updates_")
    us = _tree.cast_like(us, ps)
    with torch.no_grad():
        if _tree._use_foreach(ps):
            torch._foreach_add_(ps, us)
        else:
            for p, u in zip(ps, us):
                p.add_(u)
    return params
