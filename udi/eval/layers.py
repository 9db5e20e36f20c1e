"""Layer-wise probes (docs/methods.md section 6): k-NN, and optionally a linear probe, on the
output of every transformer block, for the [cls] token and the mean patch token, to
find the most informative layer (information the last block may have compressed away).

Features are named ``block{i}_{kind}`` (i from 0, kind ``cls`` or ``patch_mean``; any
other kind suffix is handled the same way).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from udi.eval.knn import knn_accuracy

BLOCK_KINDS = ("cls", "patch_mean")
_NAME = re.compile(r"block(\d+)_(.+)")


def block_feature_names(depth: int) -> list[str]:
    """``["block0_cls", "block0_patch_mean", "block1_cls", ..., f"block{depth-1}_patch_mean"]``."""
    return [f"block{i}_{kind}" for i in range(depth) for kind in BLOCK_KINDS]


def _parse(name: str) -> tuple[int, str]:
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"block feature name '{name}' is not of the form 'block<i>_<kind>'")
    return int(match.group(1)), match.group(2)


def layerwise_eval(
    train_blocks: dict[str, torch.Tensor],
    train_y: torch.Tensor,
    val_blocks: dict[str, torch.Tensor],
    val_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    linear_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], float] | None = None,
) -> dict:
    """k-NN top-1 (%) of every block feature: train_blocks[name] (N, D), val_blocks[name]
    (M, D), labels train_y (N,) / val_y (M,) int64.

    ``linear_fn(train_x, train_y, val_x, val_y) -> top-1 %``, when given, is called once
    per block feature; its result is stored as ``linear_top1``.

    Returns ``{"layers": {"block0_cls": {"knn_top1": %[, "linear_top1": %]}, ...},
    "best_cls_block": int, "best_cls_knn_top1": %, "best_patch_mean_block": ..., ...}``
    with a ``best_{kind}_block`` / ``best_{kind}_knn_top1`` pair per feature kind, plus
    ``best_{kind}_linear_block`` / ``best_{kind}_linear_top1`` with ``linear_fn``.
    On ties the earliest block wins.
    """
    missing = set(train_blocks) ^ set(val_blocks)
    if missing:
        raise ValueError(f"train and val block features differ: {sorted(missing)}")
    names = sorted(train_blocks, key=lambda n: (_parse(n)[0], n))  # in block order
    layers = {}
    for name in names:
        # A single k: knn_accuracy returns one entry (its key carries k capped by N).
        (knn,) = knn_accuracy(train_blocks[name], train_y, val_blocks[name], val_y, (k,), temperature).values()
        layers[name] = {"knn_top1": knn}
        if linear_fn is not None:
            layers[name]["linear_top1"] = float(linear_fn(train_blocks[name], train_y, val_blocks[name], val_y))
    results: dict = {"layers": layers}
    metrics = ("knn", "linear") if linear_fn is not None else ("knn",)
    kinds = dict.fromkeys(_parse(n)[1] for n in names)  # ordered, unique
    for kind in kinds:
        for metric in metrics:
            # Names are in block order and max keeps the first maximum: earliest block on ties.
            best = max((n for n in names if _parse(n)[1] == kind), key=lambda n: layers[n][f"{metric}_top1"])
            prefix = f"best_{kind}" if metric == "knn" else f"best_{kind}_linear"
            results[f"{prefix}_block"] = _parse(best)[0]
            results[f"best_{kind}_{metric}_top1"] = layers[best][f"{metric}_top1"]
    return results
