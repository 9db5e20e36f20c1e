"""UDI views: crop boxes, Stratified Random Sampling (SRS) masks and correspondence maps.

Implements docs/methods.md section 2. Boxes are ``(x0, y0, x1, y1)`` in normalised
image coordinates (0..1); a horizontally flipped crop has ``x0 > x1``. Grid point
``k`` of an ``F x F`` patch grid sits at fraction ``k / (F - 1)`` of its box along
each axis (corner-aligned, flips included), which is also where
:func:`udi.data.augment.crop_resize` puts output pixel ``k (S - 1) / (F - 1)``.

All randomness comes from an explicit CPU ``torch.Generator``; random draws are
made on the CPU and moved to the data's device afterwards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from udi.data.augment import Photometric, check_scale_range, crop_resize, normalize, to_float

SRS_MODES = ("random", "uniform", "dense")
_MAX_TRIES = 10  # torchvision's RandomResizedCrop attempts before the central fallback


@dataclass(frozen=True)
class ViewSpec:
    """Multi-crop and SRS settings of UDI (defaults: the ImageNet ViT-S/16 recipe)."""

    global_size: int = 224
    local_size: int = 96
    n_local: int = 10
    patch_size: int = 16
    global_scale: tuple[float, float] = (0.25, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.25)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    global_window: int = 3
    local_window: int = 2
    srs_mode: str = "random"  # "random" | "uniform" (first cell of each window) | "dense" (all cells)
    shift: bool = True  # overlap shifts of g2 and the locals (False: independent crops, ablation)

    def __post_init__(self) -> None:
        for name in ("global_size", "local_size"):
            size = getattr(self, name)
            if size % self.patch_size != 0:
                raise ValueError(f"{name}={size} is not divisible by patch_size={self.patch_size}")
            if size // self.patch_size < 2:
                raise ValueError(f"{name}={size} gives a patch grid smaller than 2x2 (patch_size={self.patch_size})")
        for name, grid in (("global_window", self.global_grid), ("local_window", self.local_grid)):
            window = getattr(self, name)
            if not 1 <= window <= grid:
                raise ValueError(f"{name}={window} must be in [1, grid={grid}]")
        if self.srs_mode not in SRS_MODES:
            raise ValueError(f"srs_mode={self.srs_mode!r} is not one of {SRS_MODES}")
        if self.n_local < 0:
            raise ValueError(f"n_local={self.n_local} must be >= 0")
        for name in ("global_scale", "local_scale"):
            check_scale_range(name, getattr(self, name))
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio={self.ratio} must satisfy 0 < low <= high")
        if not 0 <= self.flip_p <= 1:
            raise ValueError(f"flip_p={self.flip_p} must be in [0, 1]")

    @property
    def global_grid(self) -> int:
        return self.global_size // self.patch_size

    @property
    def local_grid(self) -> int:
        return self.local_size // self.patch_size

    @property
    def n_views(self) -> int:
        return 2 + self.n_local


def sample_crop_boxes(
    aspect: Tensor,
    n: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """Random-resized-crop boxes (unflipped), torchvision's rule, vectorised.

    Each box tries up to 10 (area scale, log-uniform aspect ratio) draws measured in
    original pixels and keeps the first that fits in the image; if none fits, it
    falls back to the largest central crop with the image's ratio clamped to ``ratio``.
    The position is uniform over the placements that fit (continuous, no pixel rounding).

    Args:
        aspect: (B,) original width / height.
        n: boxes per image.
        scale: range of the crop area relative to the image area.
        ratio: range of the crop's width / height in original pixels.
        generator: CPU generator.

    Returns:
        (B, n, 4) float32 boxes ``(x0, y0, x1, y1)`` with x0 < x1, on ``aspect``'s device.
    """
    device = aspect.device
    aspect = aspect.detach().to("cpu", torch.float32)
    b = aspect.shape[0]
    area = torch.rand(b, n, _MAX_TRIES, generator=generator) * (scale[1] - scale[0]) + scale[0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(torch.rand(b, n, _MAX_TRIES, generator=generator) * (log_hi - log_lo) + log_lo)
    place = torch.rand(b, n, 2, generator=generator)

    # The image is aspect x 1 in units of its height: crop pixels w = sqrt(A a r), h = sqrt(A a / r).
    a = aspect[:, None, None]
    bw, bh = torch.sqrt(area * r / a), torch.sqrt(area * a / r)  # normalised width / height
    fits = (bw <= 1) & (bh <= 1)
    first = fits.int().argmax(dim=-1, keepdim=True)  # first fitting try (0 if none fits)
    bw, bh = bw.gather(-1, first)[..., 0], bh.gather(-1, first)[..., 0]  # (B, n)
    ok = fits.any(dim=-1)

    # Central fallback: the largest crop whose ratio is the image's, clamped to `ratio`.
    fb_r = aspect.clamp(ratio[0], ratio[1])
    fb_w = (fb_r / aspect).clamp(max=1.0)[:, None].expand(b, n)
    fb_h = (aspect / fb_r).clamp(max=1.0)[:, None].expand(b, n)
    bw, bh = torch.where(ok, bw, fb_w), torch.where(ok, bh, fb_h)
    place = torch.where(ok[..., None], place, torch.full_like(place, 0.5))

    x0, y0 = place[..., 0] * (1 - bw), place[..., 1] * (1 - bh)
    return torch.stack((x0, y0, x0 + bw, y0 + bh), dim=-1).to(device)


def shift_towards(boxes: Tensor, ref: Tensor) -> Tensor:
    """Shift boxes towards a reference box so that they overlap it (docs/methods.md step 2).

    Per axis, towards the reference's centre: if the intervals are disjoint, shift by
    the gap; if their overlap is then at most half the smaller side, shift by a
    further half of the smaller side. Boxes are then translated back inside [0, 1].

    Args:
        boxes: (B, n, 4) unflipped boxes.
        ref: (B, 4) unflipped reference boxes.

    Returns:
        (B, n, 4) shifted boxes (same sizes).
    """
    lo, hi = boxes[..., :2], boxes[..., 2:]  # (B, n, 2): (x, y) per axis
    ref_lo, ref_hi = ref[:, None, :2], ref[:, None, 2:]
    overlap = torch.minimum(hi, ref_hi) - torch.maximum(lo, ref_lo)  # negative: gap
    half_smaller = torch.minimum(hi - lo, ref_hi - ref_lo) / 2
    amount = torch.where(overlap <= half_smaller, (-overlap).clamp(min=0) + half_smaller, 0.0)
    delta = amount * torch.sign((ref_lo + ref_hi) - (lo + hi))
    # Clamp by translation so the box keeps its size.
    delta = delta + (-(lo + delta)).clamp(min=0) - (hi + delta - 1).clamp(min=0)
    return torch.cat((lo + delta, hi + delta), dim=-1)


def _bounding_box(a: Tensor, b: Tensor) -> Tensor:
    """Bounding box of two unflipped (..., 4) boxes."""
    return torch.cat((torch.minimum(a[..., :2], b[..., :2]), torch.maximum(a[..., 2:], b[..., 2:])), dim=-1)


def sample_views(aspect: Tensor, spec: ViewSpec, generator: torch.Generator) -> Tensor:
    """Boxes of all UDI views of a batch (docs/methods.md steps 1-3).

    View 0 is g1, view 1 is g2 (shifted towards g1), views 2.. are the locals (shifted
    towards the bounding box of g1 and g2). Flips come last: each view is flipped
    (x0 and x1 swapped) independently with probability ``spec.flip_p``.

    Args:
        aspect: (B,) original width / height.
        spec: view settings.
        generator: CPU generator.

    Returns:
        (B, 2 + n_local, 4) float32 boxes on ``aspect``'s device.
    """
    device = aspect.device
    aspect = aspect.detach().to("cpu", torch.float32)
    g = sample_crop_boxes(aspect, 2, spec.global_scale, spec.ratio, generator)
    g1, g2 = g[:, 0], g[:, 1:]
    locs = sample_crop_boxes(aspect, spec.n_local, spec.local_scale, spec.ratio, generator)
    if spec.shift:
        g2 = shift_towards(g2, g1)
        locs = shift_towards(locs, _bounding_box(g1, g2[:, 0]))
    boxes = torch.cat((g1[:, None], g2, locs), dim=1)
    flip = torch.rand(boxes.shape[:2], generator=generator) < spec.flip_p
    flipped = boxes[..., [2, 1, 0, 3]]
    return torch.where(flip[..., None], flipped, boxes).to(device)


def srs_select(batch: int, grid: int, window: int, mode: str, generator: torch.Generator) -> Tensor:
    """Stratified Random Sampling mask over a ``grid x grid`` patch grid.

    The grid is tiled by ``n x n`` windows of ``window x window`` cells (``n = grid // window``),
    one cell per window: uniformly at random (``"random"``) or always the window's first
    cell (``"uniform"``); ``"dense"`` takes every cell. When ``n * window < grid`` the tiled
    block sits at one of the four corners, chosen uniformly per image (in both
    ``"random"`` and ``"uniform"`` modes).

    Args:
        batch: number of images B.
        grid: side F of the patch grid.
        window: side w of a window.
        mode: ``"random"``, ``"uniform"`` or ``"dense"``.
        generator: CPU generator.

    Returns:
        (B, S) int64 flat indices ``row * grid + col`` on the CPU, windows in row-major
        order; ``S = (grid // window) ** 2`` (``grid ** 2`` for dense).
    """
    if mode not in SRS_MODES:
        raise ValueError(f"srs mode {mode!r} is not one of {SRS_MODES}")
    if not 1 <= window <= grid:
        raise ValueError(f"window={window} must be in [1, grid={grid}]")
    if mode == "dense":
        return torch.arange(grid * grid).expand(batch, -1).clone()
    n = grid // window
    if mode == "random":
        offset = torch.randint(0, window, (batch, n, n, 2), generator=generator)
    else:
        offset = torch.zeros(batch, n, n, 2, dtype=torch.long)
    start = torch.arange(n) * window
    rows = start[None, :, None] + offset[..., 0]  # (B, n, n)
    cols = start[None, None, :] + offset[..., 1]
    spare = grid - n * window
    if spare > 0:
        corner = torch.randint(0, 4, (batch,), generator=generator)
        rows = rows + (spare * (corner // 2))[:, None, None]
        cols = cols + (spare * (corner % 2))[:, None, None]
    return (rows * grid + cols).reshape(batch, n * n)


def grid_positions(box: Tensor, grid: int, select: Tensor) -> Tensor:
    """Image positions of selected grid points.

    Args:
        box: (B, 4) possibly flipped boxes.
        grid: side F of the grid.
        select: (B, S) flat indices into the grid.

    Returns:
        (B, S, 2) normalised image positions ``(x, y)``.
    """
    select = select.to(box.device)
    frac = torch.stack((select % grid, select // grid), dim=-1).to(box.dtype) / (grid - 1)
    # lerp is exact at both ends, so edge points sit exactly on the box edges.
    return torch.lerp(box[:, None, :2], box[:, None, 2:], frac)


def correspondence(
    src_box: Tensor, src_grid: int, select: Tensor, tgt_box: Tensor, tgt_grid: int
) -> tuple[Tensor, Tensor]:
    """Bilinear maps from a source view's selected grid points onto a target view's grid.

    A point is valid when it lies strictly inside the target box on both axes. Its
    target-grid position ``(pos - box0) * (G - 1) / (box1 - box0)`` (flipped targets
    included) gets bilinear weights on the floor cell and floor + 1 (clamped to G - 1,
    so weights still sum to 1 on the last row/column).

    Args:
        src_box: (B, 4) source boxes (possibly flipped).
        src_grid: side F of the source grid.
        select: (B, S) flat indices on the source grid.
        tgt_box: (B, 4) target boxes (possibly flipped).
        tgt_grid: side G of the target grid.

    Returns:
        weights: (B, S, G*G) float32; rows sum to 1 where valid and are all zero otherwise.
        valid: (B, S) bool.
    """
    src_box = src_box.float()
    tgt_box = tgt_box.to(src_box.device, torch.float32)
    pos = grid_positions(src_box, src_grid, select)  # (B, S, 2)
    t_lo, t_hi = tgt_box[:, None, :2], tgt_box[:, None, 2:]
    inside = (pos > torch.minimum(t_lo, t_hi)) & (pos < torch.maximum(t_lo, t_hi))
    valid = inside.all(dim=-1)

    g = tgt_grid - 1
    coord = ((pos - t_lo) * g / (t_hi - t_lo)).clamp(0, g)  # clamp only matters for invalid rows
    base = coord.floor()
    frac = coord - base
    base = base.long()
    nxt = (base + 1).clamp(max=g)
    # Four neighbours: (x, y) cell index and weight.
    xs = torch.stack((base[..., 0], nxt[..., 0], base[..., 0], nxt[..., 0]), dim=-1)
    ys = torch.stack((base[..., 1], base[..., 1], nxt[..., 1], nxt[..., 1]), dim=-1)
    wx = torch.stack((1 - frac[..., 0], frac[..., 0]), dim=-1)  # (B, S, 2)
    wy = torch.stack((1 - frac[..., 1], frac[..., 1]), dim=-1)
    w = (wy[..., :, None] * wx[..., None, :]).flatten(-2) * valid[..., None]  # (B, S, 4)

    weights = torch.zeros(*valid.shape, tgt_grid * tgt_grid, device=src_box.device)
    weights.scatter_add_(-1, ys * tgt_grid + xs, w)
    return weights, valid


def one_hot_selection(select: Tensor, grid: int) -> Tensor:
    """(B, S) flat indices -> (B, S, grid**2) float32 one-hot rows (the student's own map)."""
    return F.one_hot(select, grid * grid).float()


@dataclass
class UDIViews:
    """One training batch of UDI views (B images, L = n_local, Ng = global grid cells)."""

    globals_: Tensor  # (2B, 3, Gs, Gs) normalised, view-major: [0:B] = g1, [B:2B] = g2
    locals_: Tensor  # (L*B, 3, Ls, Ls) normalised, view-major (0 rows when L = 0)
    boxes: Tensor  # (B, 2 + L, 4)
    select_global: Tensor  # (B, Sg) SRS mask shared by both global views
    select_local: Tensor  # (B, Sl) SRS mask shared by all local views
    map_global: Tensor  # (2, B, Sg, Ng): [u] maps student global u's points onto teacher global 1 - u
    valid_global: Tensor  # (2, B, Sg) bool
    map_local: Tensor  # (L, 2, B, Sl, Ng): [j, v] maps local j's points onto teacher global v
    valid_local: Tensor  # (L, 2, B, Sl) bool

    def to(self, device: torch.device | str) -> UDIViews:
        """A copy with every tensor on ``device``."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def make_udi_views(
    canvas: Tensor,
    aspect: Tensor,
    spec: ViewSpec,
    generator: torch.Generator,
    photometric: Photometric | None = None,
) -> UDIViews:
    """Build one UDI training batch from whole-image canvases.

    Random draws, in order: boxes, global SRS mask, local SRS mask, photometric
    decisions of the global crops, then of the local crops.

    Args:
        canvas: (B, 3, H, W) uint8 or float in [0, 1], the whole images resized (any device).
        aspect: (B,) original width / height.
        spec: view settings.
        generator: CPU generator.
        photometric: per-crop photometric recipe; ``None`` uses the default DINO recipe
            (pass ``Photometric(enabled=False)`` for none).

    Returns:
        The views, masks and maps, all on ``canvas``'s device.
    """
    device = canvas.device
    images = to_float(canvas)
    boxes = sample_views(aspect, spec, generator).to(device)

    def crops(views: range, size: int) -> Tensor:
        if len(views) == 0:
            return images.new_zeros(0, 3, size, size)
        return torch.cat([crop_resize(images, boxes[:, v], size) for v in views])

    return views_from_crops(crops(range(2), spec.global_size), crops(range(2, spec.n_views), spec.local_size),
                            boxes, spec, generator, photometric)


def views_from_crops(
    globals_: Tensor,
    locals_: Tensor,
    boxes: Tensor,
    spec: ViewSpec,
    generator: torch.Generator,
    photometric: Photometric | None = None,
) -> UDIViews:
    """Finish a batch of UDI views from its crops: photometric augmentation, normalisation, SRS
    masks and correspondence maps. Random draws, in order: global SRS mask, local SRS mask,
    photometric decisions of the global crops, then of the local crops.

    Args:
        globals_: (2B, 3, Gs, Gs) view-major ([0:B] = g1), uint8 or float in [0, 1]; or
            (B, 2, 3, Gs, Gs) image-major, as a data loader stacks ``data.crops: full`` items.
        locals_: (L*B, 3, Ls, Ls) view-major, or (B, L, 3, Ls, Ls).
        boxes: (B, 2 + L, 4) the boxes the crops sample (``crop_resize``'s convention).
        spec, generator, photometric: as in :func:`make_udi_views`.
    """
    photometric = Photometric() if photometric is None else photometric
    if globals_.dim() == 5:  # image-major from the data loader -> view-major
        globals_, locals_ = (x.transpose(0, 1).flatten(0, 1) for x in (globals_, locals_))
    device, b = globals_.device, boxes.shape[0]
    boxes = boxes.to(device)
    sel_g = srs_select(b, spec.global_grid, spec.global_window, spec.srs_mode, generator).to(device)
    sel_l = srs_select(b, spec.local_grid, spec.local_window, spec.srs_mode, generator).to(device)
    globals_ = normalize(photometric(to_float(globals_), generator))
    locals_ = normalize(photometric(to_float(locals_), generator)) if len(locals_) else to_float(locals_)

    fg, fl, n_l = spec.global_grid, spec.local_grid, spec.n_local
    sg, sl = sel_g.shape[1], sel_l.shape[1]
    g1, g2 = boxes[:, 0], boxes[:, 1]
    map_global, valid_global = correspondence(
        torch.cat((g1, g2)), fg, sel_g.repeat(2, 1), torch.cat((g2, g1)), fg
    )
    # Every (local j, teacher global v) pair in one batched call, flattened as (j, v, b).
    src = boxes[:, 2:].permute(1, 0, 2)[:, None].expand(n_l, 2, b, 4)
    tgt = boxes[:, :2].permute(1, 0, 2)[None].expand(n_l, 2, b, 4)
    map_local, valid_local = correspondence(
        src.reshape(-1, 4), fl, sel_l.repeat(2 * n_l, 1), tgt.reshape(-1, 4), fg
    )
    return UDIViews(
        globals_=globals_,
        locals_=locals_,
        boxes=boxes,
        select_global=sel_g,
        select_local=sel_l,
        map_global=map_global.view(2, b, sg, fg * fg),
        valid_global=valid_global.view(2, b, sg),
        map_local=map_local.view(n_l, 2, b, sl, fg * fg),
        valid_local=valid_local.view(n_l, 2, b, sl),
    )
