"""Reading and replacing state entries by name (`tree_get`, `tree_get_all_with_path`,
`tree_set`), and a state as a flat dict of tensors for checkpoints (`tree_state_dict`,
`tree_load_state_dict_`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "tree_get",
    "tree_get_all_with_path",
    "tree_load_state_dict_",
    "tree_set",
    "tree_state_dict",
]

Tree = Any


def _children_with_names(node: Any, indices: bool = False) -> list[tuple[Any, Any]] | None:
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return list(zip(node._fields, node))
    if isinstance(node, dict):
        return list(node.items())
    if isinstance(node, (list, tuple)):
        return [(i if indices else None, c) for i, c in enumerate(node)]
    return None


def _find(node: Any, key: str, found: list) -> None:
    children = _children_with_names(node)
    if children is None:
        return
    for name, child in children:
        if name == key:
            found.append(child)
        else:
            _find(child, key, found)


def tree_get(tree: Tree, key: str, default: Any = None) -> Any:
    """Find the value stored under ``key`` (a NamedTuple field or dict key) anywhere in ``tree``.

    Raises:
        KeyError: if ``key`` occurs more than once (ambiguous).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.inject_hyperparams(tf.adam)(learning_rate=0.1)
        >>> tf.tree_get(tx.init({"w": torch.zeros(1)}), "learning_rate")
        tensor(0.1000, dtype=torch.float64)
    """
    found: list[Any] = []
    _find(tree, key, found)
    if len(found) > 1:
        raise KeyError(f"tree_get: key {key!r} occurs {len(found)} times in the tree.")
    return found[0] if found else default


def tree_set(tree: Tree, **values: Any) -> Tree:
    """Return ``tree`` with every NamedTuple field or dict key named in ``values`` replaced.

    Raises:
        KeyError: if a name does not occur in the tree.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_adam()
        >>> state = tf.tree_set(tx.init({"w": torch.zeros(1)}), count=torch.tensor(10))
        >>> tf.tree_get(state, "count")
        tensor(10)
    """
    seen: set[str] = set()

    def rebuild(node: Any) -> Any:
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            fields = {}
            for name, child in zip(node._fields, node):
                if name in values:
                    seen.add(name)
                    fields[name] = values[name]
                else:
                    fields[name] = rebuild(child)
            return type(node)(**fields)
        if isinstance(node, dict):
            out = {}
            for name, child in node.items():
                if name in values:
                    seen.add(name)
                    out[name] = values[name]
                else:
                    out[name] = rebuild(child)
            return type(node)(out) if type(node) is not dict else out
        if isinstance(node, (list, tuple)):
            return type(node)(rebuild(c) for c in node)
        return node

    out = rebuild(tree)
    missing = set(values) - seen
    if missing:
        raise KeyError(f"tree_set: keys {sorted(missing)} do not occur in the tree.")
    return out


def tree_get_all_with_path(
    tree: Tree,
    key: str | type,
    filtering: Callable[[tuple[Any, ...], Any], bool] | None = None,
) -> list[tuple[tuple[Any, ...], Any]]:
    """Every value under ``key`` in ``tree``, with its path (optax's ``tree_get_all_with_path``).

    ``key`` is a NamedTuple field or dict key, or a type: then every node of that type
    (``tf.ScaleByAdamState``) is returned. A path is the tuple of field names, dict keys and
    list indices from the root. ``filtering(path, value)`` keeps only what it accepts.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> state = tf.chain(tf.scale_by_adam(), tf.scale_by_adam()).init({"w": torch.zeros(1)})
        >>> [path for path, _ in tf.tree_get_all_with_path(state, "count")]
        [(0, 'count'), (1, 'count')]
    """
    found: list[tuple[tuple[Any, ...], Any]] = []

    def visit(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(key, type) and isinstance(node, key):
            found.append((path, node))
            return
        for name, child in _children_with_names(node, indices=True) or ():
            if not isinstance(key, type) and name == key:
                found.append(((*path, name), child))
            else:
                visit(child, (*path, name))

    visit(tree, ())
    return [(p, v) for p, v in found if filtering is None or filtering(p, v)]


def tree_state_dict(tree: Tree) -> dict[str, Any]:
    """``tree``'s tensor leaves as a flat ``{key: tensor}`` dict, a key per leaf's path.

    A key joins the path's NamedTuple field names, dict keys and sequence indices with dots
    (``"1.0.mu.w"``: the ``mu`` of the first state of a chain's second stage, at parameter
    ``w``), so it names the same leaf across runs, processes and numbers of ranks: what
    ``torch.save(..., weights_only=True)`` and `torch.distributed.checkpoint` (which saves a
    flat dict of tensors, sharded ones included) expect. The tensors are the tree's own.
    `tree_load_state_dict_` copies such a dict back.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> state = tf.adam(0.1).init({"w": torch.zeros(2)})
        >>> sorted(tf.tree_state_dict(state))
        ['0.count', '0.mu.w', '0.nu.w']
    """
    from torchopt_fn.tree._flatten import leaf_trails  # (the flatteners import this package)

    leaves, _, trails = leaf_trails(tree)
    return {
        ".".join(str(key) for _, key in trail): x
        for x, trail in zip(leaves, trails)
        if hasattr(x, "shape") and hasattr(x, "copy_")
    }


def tree_load_state_dict_(tree: Tree, state_dict: dict[str, Any]) -> Tree:
    """Copy a `tree_state_dict` into ``tree``'s tensors, in place; return ``tree``.

    The whole dict is checked first (the same keys, each value a tensor of its leaf's
    shape), so a malformed one changes nothing. Values are cast to the leaves' dtypes and
    moved to their devices.

    Raises:
        ValueError: naming the missing or unexpected keys, or the first mismatched shape.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.adam(0.1)
        >>> saved = tf.tree_state_dict(tx.init({"w": torch.ones(2)}))
        >>> fresh = tx.init({"w": torch.zeros(2)})
        >>> int(tf.tree_load_state_dict_(fresh, {**saved, "0.count": torch.tensor(7)})[0].count)
        7
    """
    import torch

    mine = tree_state_dict(tree)
    missing = sorted(set(mine) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(mine))
    if missing or unexpected:
        raise ValueError(
            f"tree_load_state_dict_: missing keys {missing}, unexpected keys {unexpected} "
            "(was it saved for another model or transformation?)."
        )
    for key, x in mine.items():
        y = state_dict[key]
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(
                f"tree_load_state_dict_: {key} has shape {got}, expected {tuple(x.shape)}."
            )
    with torch.no_grad():
        for key, x in mine.items():
            x.copy_(state_dict[key])
    return tree
