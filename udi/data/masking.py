"""I-JEPA multi-block masking over a square patch grid, vectorised over the batch.

Per batch (as I-JEPA): one target block size (area scale and aspect ratio drawn once) and
one context block size (scale drawn once, aspect ratio 1). Per image: ``n_targets``
target blocks at uniform positions, and one context block from which every target patch
is removed. Patch indices are row-major on the ``grid x grid`` patch grid.

Every image of a batch gets the same number of context and target tokens, so the batch
stacks: target blocks share their size, and the context is truncated to the batch minimum
(its first patches in row-major order, as I-JEPA does).

Departures from I-JEPA's code, all towards its stated rule:
- block sizes are clamped to the grid (I-JEPA shrinks them to at most ``grid - 1``, which
  forbids a context block of scale 1.0 and, on a 4 x 4 grid, cuts the context to 3 x 3);
- a block's top-left corner is uniform over every position where the block fits (I-JEPA
  omits the last row and column of positions);
- scale and aspect ratio are drawn independently (I-JEPA reuses one uniform draw for both);
- the context must keep at least ``min_context`` patches (I-JEPA: more than ``min_keep``).
  The context block position is drawn up to ``context_tries`` times per image and the first
  draw that keeps enough patches wins; if none does, the targets are excluded one fewer at
  a time (the last target first), as I-JEPA relaxes its acceptable regions. Images where
  that happened are flagged in ``BlockMasks.relaxed``: their context may overlap a target.

All random draws come from an explicit CPU ``torch.Generator``, in a fixed order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from udi.data.augment import check_scale_range


def block_size(grid: int, scale: float, aspect: float) -> tuple[int, int]:
    """(height, width) in patches of a block covering ``scale`` of a ``grid x grid`` grid with
    height / width ``aspect`` (I-JEPA's rounding), clamped to ``[1, grid]``."""
    keep = int(grid * grid * scale)
    height = int(round(math.sqrt(keep * aspect)))
    width = int(round(math.sqrt(keep / aspect)))
    return min(max(height, 1), grid), min(max(width, 1), grid)


@dataclass(frozen=True)
class MaskSpec:
    """Multi-block masking settings (defaults: I-JEPA's ImageNet ones, docs/methods.md section 5)."""

    grid: int  # side of the patch grid
    n_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_context: int = 10
    context_tries: int = 20

    def __post_init__(self) -> None:
        if self.grid < 2:
            raise ValueError(f"grid={self.grid}: the patch grid must be at least 2 x 2")
        if self.n_targets < 1:
            raise ValueError(f"n_targets={self.n_targets} must be >= 1")
        for name in ("target_scale", "context_scale"):
            check_scale_range(name, getattr(self, name))
        lo, hi = self.target_aspect
        if not 0 < lo <= hi:
            raise ValueError(f"target_aspect={(lo, hi)} must satisfy 0 < low <= high")
        if self.context_tries < 1:
            raise ValueError(f"context_tries={self.context_tries} must be >= 1")
        smallest = math.prod(block_size(self.grid, self.context_scale[0], 1.0))
        if not 1 <= self.min_context <= smallest:
            raise ValueError(
                f"min_context={self.min_context} must be in [1, {smallest}]: the smallest context block "
                f"(scale {self.context_scale[0]}) on a {self.grid} x {self.grid} grid has {smallest} patches"
            )


@dataclass
class BlockMasks:
    """Masks of one batch of B images; K = target block height x width, Nc context tokens."""

    context: Tensor  # (B, Nc) int64 patch indices, ascending (row-major)
    targets: Tensor  # (B, n_targets, K) int64 patch indices, row-major inside each block
    target_size: tuple[int, int]  # (height, width) of every target block of the batch
    context_size: tuple[int, int]  # (height, width) of the context block before removing targets
    target_scale: float  # the drawn area scale of the target blocks
    target_aspect: float  # the drawn height / width of the target blocks
    relaxed: Tensor  # (B,) bool: the context could keep min_context patches only by overlapping a target


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return lo + (hi - lo) * torch.rand(1, generator=generator).item()


def _corners(shape: tuple[int, ...], grid: int, height: int, width: int, generator: torch.Generator) -> Tensor:
    """Uniform top-left corners (*shape, 2) = (row, col) of an height x width block inside the grid."""
    rows = torch.randint(0, grid - height + 1, shape, generator=generator)
    cols = torch.randint(0, grid - width + 1, shape, generator=generator)
    return torch.stack((rows, cols), dim=-1)


def _block_masks(corners: Tensor, grid: int, height: int, width: int) -> Tensor:
    """Corners (..., 2) -> boolean masks (..., grid, grid) of the blocks."""
    cells = torch.arange(grid)
    top, left = corners[..., 0, None], corners[..., 1, None]
    in_rows = (cells >= top) & (cells < top + height)  # (..., grid)
    in_cols = (cells >= left) & (cells < left + width)
    return in_rows[..., :, None] & in_cols[..., None, :]


def sample_block_masks(batch: int, spec: MaskSpec, generator: torch.Generator) -> BlockMasks:
    """Context and target masks of a batch (see the module docstring).

    Random draws, in order: target scale, target aspect ratio, context scale, target corners
    (B, n_targets), context corners (B, context_tries).

    Args:
        batch: number of images B.
        spec: masking settings.
        generator: CPU generator.

    Returns:
        :class:`BlockMasks` on the CPU.
    """
    grid, n_targets = spec.grid, spec.n_targets
    target_scale = _uniform(*spec.target_scale, generator)
    # Uniform in the aspect ratio itself, as I-JEPA.
    target_aspect = _uniform(*spec.target_aspect, generator)
    th, tw = block_size(grid, target_scale, target_aspect)
    ch, cw = block_size(grid, _uniform(*spec.context_scale, generator), 1.0)
    target_corners = _corners((batch, n_targets), grid, th, tw, generator)
    context_corners = _corners((batch, spec.context_tries), grid, ch, cw, generator)

    # Target indices straight from the corners: row-major inside each block.
    rows = target_corners[..., 0, None, None] + torch.arange(th)[:, None]  # (B, n_targets, th, 1)
    cols = target_corners[..., 1, None, None] + torch.arange(tw)[None, :]  # (B, n_targets, 1, tw)
    targets = (rows * grid + cols).flatten(2)  # (B, n_targets, th * tw)

    target_masks = _block_masks(target_corners, grid, th, tw).flatten(2)  # (B, n_targets, N)
    candidates = _block_masks(context_corners, grid, ch, cw).flatten(2)  # (B, tries, N)
    # excluded[:, k] = union of the first k targets; level k = n_targets is the strict rule,
    # lower levels are the relaxations, tried in that order.
    union = torch.cumsum(target_masks.int(), dim=1) > 0
    excluded = torch.cat((torch.zeros_like(union[:, :1]), union), dim=1).flip(1)  # (B, n_targets + 1, N)
    kept = candidates[:, None] & ~excluded[:, :, None]  # (B, levels, tries, N)
    good = kept.sum(-1) >= spec.min_context  # level 0 (nothing excluded) always passes (MaskSpec check)
    first = good.flatten(1).int().argmax(dim=1)  # first good (level, try) per image
    level = first // spec.context_tries
    context_mask = kept.flatten(1, 2)[torch.arange(batch), first]  # (B, N)

    # Truncate to the batch minimum: the first Nc kept patches of each image, row-major.
    n_context = int(context_mask.sum(-1).min())
    order = torch.argsort((~context_mask).to(torch.uint8), dim=1, stable=True)
    return BlockMasks(
        context=order[:, :n_context],
        targets=targets,
        target_size=(th, tw),
        context_size=(ch, cw),
        target_scale=target_scale,
        target_aspect=target_aspect,
        relaxed=level > 0,
    )
