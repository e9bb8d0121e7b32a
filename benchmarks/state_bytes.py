"""Bytes of optimizer state per parameter, for every optimizer in the test table.

The state of each optimizer is initialised on a small transformer's parameters (float32:
embeddings, attention and MLP matrices, biases and norms; 726,144 parameters in 10 tensors) and
its tensors are counted: every floating leaf, and the step counters (a few bytes). Where the
optimizer takes ``mu_dtype``, a second column keeps its first moment in bfloat16; the third
wraps it in ``quantized_state`` (leaves of 4096 elements or more in 8 bits). Prints a
markdown table (docs/benchmarks.md holds it):

    python benchmarks/state_bytes.py
"""

from __future__ import annotations

import inspect
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torchopt_fn as tf
from tests.helpers import OPTIMIZERS

SHAPES = {
    "embed": (4096, 128),
    "qkv": (128, 384),
    "proj": (128, 128),
    "up": (128, 512),
    "down": (512, 128),
    "qkv_bias": (384,),
    "up_bias": (512,),
    "ln_scale": (128,),
    "ln_bias": (128,),
    "head_bias": (4096,),
}


def params() -> dict[str, torch.Tensor]:
    return {k: torch.zeros(s) for k, s in SHAPES.items()}


def state_bytes(tx: tf.GradientTransformation, p: dict[str, torch.Tensor]) -> int:
    leaves = tf.tree_leaves(tx.init(p))
    return sum(x.numel() * x.element_size() for x in leaves if isinstance(x, torch.Tensor))


def main() -> None:
    warnings.simplefilter("ignore", DeprecationWarning)  # optimistic_adam's notice
    p = params()
    n = sum(x.numel() for x in p.values())
    rows, seen = [], set()
    for case in OPTIMIZERS:
        if case.name in seen:
            continue  # one row per optimizer: its first (default-like) case
        seen.add(case.name)
        tx = case.factory(**case.kwargs)
        fp32 = state_bytes(tx, p) / n
        low = ""
        if "mu_dtype" in inspect.signature(case.factory).parameters:
            low_tx = case.factory(**{**case.kwargs, "mu_dtype": torch.bfloat16})
            low = f"{state_bytes(low_tx, p) / n:.2f}"
        eight = state_bytes(tf.quantized_state(tx), p) / n
        rows.append((case.name, fp32, low, eight))
    print(f"State on {n:,} float32 parameters in {len(p)} tensors.\n")
    print(
        "| optimizer | state bytes / parameter | with `mu_dtype=torch.bfloat16` "
        "| in `quantized_state` (8-bit) |"
    )
    print("|---|---:|---:|---:|")
    for name, fp32, low, eight in sorted(rows, key=lambda r: (r[1], r[0])):
        print(f"| `{name}` | {fp32:.2f} | {low} | {eight:.2f} |")


if __name__ == "__main__":
    main()
