"""Attention statistics per block (Beyond [cls]; docs/methods.md section 6).

For every block, averaged over heads and images:

- ``cls_entropy``: entropy (natural log) of the first class token's attention over
  the N patch tokens, renormalised to sum to 1 without the class tokens, so that
  values are comparable across ``n_cls`` and bounded by log(N) (uniform over patches);
- ``cls_to_cls``: attention mass of the first class token on all class tokens
  (summed, not renormalised; n_cls / T under uniform attention);
- ``patch_entropy``: the same renormalised entropy for every patch token's attention
  over the patches, averaged over the patches too.

Low cls entropy means the [cls] token attends to few patches; a large cls->cls mass
means it mostly ignores the patches (a "register"-like behaviour).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch
from matplotlib.figure import Figure
from rich.progress import Progress
from torch import Tensor

STATISTICS: tuple[str, ...] = ("cls_entropy", "cls_to_cls", "patch_entropy")
_TITLES = {
    "cls_entropy": "[cls] -> patches attention entropy",
    "cls_to_cls": "[cls] -> class tokens attention mass",
    "patch_entropy": "patch -> patches attention entropy",
}


def _renormalised_entropy(weights: Tensor) -> Tensor:
    """Entropy (nats) over the last dim after renormalising it to sum to 1: (..., N) -> (...)."""
    # The clamp only matters if all mass sat on the class tokens (fp underflow).
    p = weights / weights.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)
    return -torch.special.xlogy(p, p).sum(dim=-1)  # xlogy: 0 * log 0 = 0


def attention_statistics(attn: Tensor, n_cls: int) -> dict[str, Tensor]:
    """Per-image statistics of one block.

    attn: softmax weights (B, H, T, T), rows = queries, T = n_cls + N (class tokens first).
    Returns ``{"cls_entropy", "cls_to_cls", "patch_entropy"}``, each (B,) float32, averaged
    over heads (and over patches for ``patch_entropy``).
    """
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"expected attention (B, H, T, T), got {tuple(attn.shape)}")
    if not 1 <= n_cls < attn.shape[-1]:
        raise ValueError(f"n_cls {n_cls} does not fit {attn.shape[-1]} tokens")
    attn = attn.float()  # fp16 attention would lose precision in the log
    cls_row = attn[:, :, 0]  # (B, H, T)
    return {
        "cls_entropy": _renormalised_entropy(cls_row[..., n_cls:]).mean(dim=1),
        "cls_to_cls": cls_row[..., :n_cls].sum(dim=-1).mean(dim=1),
        "patch_entropy": _renormalised_entropy(attn[:, :, n_cls:, n_cls:]).mean(dim=(1, 2)),
    }


@torch.no_grad()
def collect_attention_stats(
    backbone,
    images_iter: Iterable[Tensor],
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """Average the statistics of every block over all images.

    backbone: a ``VisionTransformer`` (moved to ``device``, put in eval mode).
    images_iter: batches (B, 3, S, S) of normalised images, all with the same S.
    Returns ``{"blocks": [{"block": i, "cls_entropy": float, "cls_to_cls": float,
    "patch_entropy": float}, ...], "max_entropy": log(N), "num_images": n}``
    with blocks 0-based, in order.
    """
    backbone = backbone.to(device).eval()
    sums = torch.zeros(backbone.depth, len(STATISTICS), dtype=torch.float64)
    num_images, num_patches = 0, None
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("attention statistics", total=None)
        for images in images_iter:
            attns = backbone.get_attention(images.to(device), indices=range(backbone.depth))
            n = attns[0].shape[-1] - backbone.n_cls
            # Entropies over different numbers of patches have different bounds: do not mix them.
            if num_patches not in (None, n):
                raise ValueError(f"batches with {num_patches} and {n} patches cannot be averaged")
            num_patches = n
            for i, attn in enumerate(attns):
                stats = attention_statistics(attn, backbone.n_cls)
                sums[i] += torch.stack([stats[k].sum() for k in STATISTICS]).double().cpu()
            num_images += len(images)
            bar.advance(task, len(images))
    if num_images == 0:
        raise ValueError("no images to compute attention statistics on")
    means = (sums / num_images).tolist()
    return {
        "blocks": [{"block": i, **dict(zip(STATISTICS, row))} for i, row in enumerate(means)],
        "max_entropy": math.log(num_patches),
        "num_images": num_images,
    }


def plot_attention_stats(stats: dict, out_dir: Path) -> list[Path]:
    """One line plot per statistic against the block index, written to
    ``out_dir/attn_{statistic}.png``; the entropy plots show log(N) as a dashed line.
    Returns the paths in the order of ``STATISTICS``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = [b["block"] for b in stats["blocks"]]
    paths = []
    for name in STATISTICS:
        # Figure + savefig renders with Agg without touching pyplot's global backend state.
        fig = Figure(figsize=(5, 3.5), layout="constrained")
        ax = fig.subplots()
        ax.plot(blocks, [b[name] for b in stats["blocks"]], marker="o")
        if name.endswith("entropy"):
            ax.axhline(stats["max_entropy"], color="gray", linestyle="--", label="log(N), uniform")
            ax.legend()
            ax.set_ylabel("entropy (nats)")
        else:
            ax.set_ylabel("attention mass")
        ax.set_xlabel("block (0-based)")
        ax.set_xticks(blocks)
        ax.set_title(_TITLES[name])
        path = out_dir / f"attn_{name}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths
