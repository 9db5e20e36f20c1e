"""``scenes``: a generated data set of small synthetic images with exact targets.

Each image shows 1 to 3 objects (10 shape classes, random colour, size,
position and rotation, overlapping allowed) on one of 5 background textures.
Everything is a pure function of ``(seed, split_id, index)``, so items are
rendered lazily, identically in every process, and need no storage.

Shapes (and the hard-edged textures) are rasterised at twice the output
resolution; the coverage of each 2x2 block is the alpha used to composite at
output resolution, which anti-aliases edges. Design choices that keep the
targets learnable:

- object colours are saturated and bright (S in [0.7, 1], V in [0.75, 1]) with
  hues drawn from the middle 70% of one of 8 hue bins (distinct bins within a
  scene), while backgrounds are desaturated (S <= 0.25) and darker (V <= 0.7);
- textures are faint: the blend between the two background colours is pulled
  to its mean by ``TEXTURE_CONTRAST`` (0.25). The texture is the one thing every
  crop of an image shares, so at full contrast self-supervised methods learn it
  first and the shapes hardly at all (BENCHMARKS.md, session 2); faint, it is
  still there for the ``background`` probes;
- each object lies fully inside the image, its centre (the centroid of the
  shape) at least 4% of the image size away from the midlines, so its
  quadrant is unambiguous;
- an object is only accepted if every object already drawn keeps at least
  half of its own area visible; after a few rejected placements the object is
  dropped, so ``count`` is the number of objects actually drawn.
"""

from __future__ import annotations

import colorsys
import math
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "diamond", "cross",
    "ring", "star", "hexagon", "half_disc", "bar",
)
TEXTURES: tuple[str, ...] = ("flat", "gradient", "stripes", "checker", "noise")
SPLIT_IDS = {"train": 0, "val": 1}
NUM_HUE_BINS = 8
DEFAULT_NUM_IMAGES = {"train": 10_000, "val": 2_000}

_MAX_OBJECTS = 3
# Object radius, as a fraction of the image size: the first object is the main one, the
# others are smaller distractors, so "the largest object" (the label) is a salient one and
# the distractors are the detail beyond it that the richness probes look for.
_MAIN_RADIUS = (0.24, 0.34)
_DISTRACTOR_RADIUS = (0.1, 0.18)
_EXTENT = 1.15  # every shape fits in a disc of radius _EXTENT * r around its centre
_MIDLINE_GAP = 0.04  # minimum centre distance from the midlines, fraction of size
_MIN_VISIBLE = 0.5  # fraction of its own area every drawn object keeps visible
_PLACEMENT_TRIES = 8
TEXTURE_CONTRAST = 0.25  # texture blend weights are scaled by this around their mean

# Star: 5 tips at radius 1, inner vertices at radius _STAR_INNER.
_STAR_INNER = 0.45
_STAR_SECTOR = 2 * np.pi / 5
# Outward normal of the edge tip (1, 0) -> inner vertex, in the folded sector frame.
_STAR_NORMAL = (
    _STAR_INNER * np.sin(_STAR_SECTOR / 2),
    1.0 - _STAR_INNER * np.cos(_STAR_SECTOR / 2),
)
# Half disc: the flat side sits at v = -_HALF_DISC_CENTROID so the centroid is at the origin.
_HALF_DISC_CENTROID = 4.0 / (3.0 * np.pi)


def _polygon_normals(n: int) -> tuple[tuple[float, float], ...]:
    """Unit outward edge normals of a regular n-gon."""
    angles = np.pi / 2 + 2 * np.pi * np.arange(n) / n
    return tuple(zip(np.cos(angles).tolist(), np.sin(angles).tolist()))


_TRIANGLE_NORMALS = _polygon_normals(3)
_HEXAGON_AXES = _polygon_normals(6)[:3]  # opposite edges share an axis


def _inside_triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Circumradius 1, centroid at the origin: the intersection of 3 half-planes.
    (a0, b0), (a1, b1), (a2, b2) = _TRIANGLE_NORMALS
    return (u * a0 + v * b0 <= 0.5) & (u * a1 + v * b1 <= 0.5) & (u * a2 + v * b2 <= 0.5)


def _inside_hexagon(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Circumradius 1: 3 slabs |<p, n>| <= apothem.
    apothem = np.sqrt(3) / 2
    (a0, b0), (a1, b1), (a2, b2) = _HEXAGON_AXES
    return (np.abs(u * a0 + v * b0) <= apothem) & (np.abs(u * a1 + v * b1) <= apothem) & (
        np.abs(u * a2 + v * b2) <= apothem
    )


def _inside_star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho = np.hypot(u, v)
    # Fold the angle into one half sector: 0 at a tip, pi/5 at an inner vertex.
    a = np.abs(np.arctan2(v, u) % _STAR_SECTOR - _STAR_SECTOR / 2)
    return rho * (_STAR_NORMAL[0] * np.cos(a) + _STAR_NORMAL[1] * np.sin(a)) <= _STAR_NORMAL[0]


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of the points (u, v), in the object's frame scaled by its radius, inside shape."""
    name = SHAPES[shape]
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.7
    if name == "triangle":
        return _inside_triangle(u, v)
    if name == "diamond":  # a rhombus, distinct from a rotated square
        return np.abs(u) + np.abs(v) / 0.55 <= 1.0
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return (np.maximum(au, av) <= 1.0) & (np.minimum(au, av) <= 0.3)
    if name == "ring":
        rr = u * u + v * v
        return (rr <= 1.0) & (rr >= 0.55**2)
    if name == "star":
        return _inside_star(u, v)
    if name == "hexagon":
        return _inside_hexagon(u, v)
    if name == "half_disc":
        return (u * u + (v + _HALF_DISC_CENTROID) ** 2 <= 1.0) & (v >= -_HALF_DISC_CENTROID)
    if name == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.25)
    raise ValueError(f"unknown shape id {shape}")


@lru_cache(maxsize=16)
def _grid(size: int, scale: int) -> np.ndarray:
    """Pixel-centre coordinates (scale*size,) of a grid at ``scale`` times the
    output resolution, in output-pixel units (read-only)."""
    c = ((np.arange(scale * size) + 0.5) / scale).astype(np.float32)
    c.setflags(write=False)
    return c


def _pool2(a: np.ndarray) -> np.ndarray:
    """Sum over 2x2 blocks: (2h, 2w) -> (h, w). Faster than reshape + mean on small arrays."""
    h, w = a.shape[0] // 2, a.shape[1] // 2
    rows = a.reshape(h, 2, 2 * w)
    rows = rows[:, 0] + rows[:, 1]
    cols = rows.reshape(h, w, 2)
    return cols[..., 0] + cols[..., 1]


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, texture: int, size: int) -> np.ndarray:
    """Render background texture id ``texture``: float32 (size, size, 3) in 0..255."""
    hue = rng.random()
    v_lo = rng.uniform(0.08, 0.35)
    c0 = _rgb(hue, rng.uniform(0.0, 0.25), v_lo)
    c1 = _rgb(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.0, 0.25), v_lo + rng.uniform(0.2, 0.35))
    if rng.random() < 0.5:
        c0, c1 = c1, c0
    name = TEXTURES[texture]
    if name == "flat":
        image = np.empty((size, size, 3), dtype=np.float32)
        image[:] = c0
        return image
    # Every other texture blends c0 and c1 with a weight map t (size, size) in [0, 1].
    if name == "gradient":
        c = _grid(size, 1)
        angle = rng.uniform(0, 2 * np.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        # Normalise so that t spans [0, 1] between the extreme pixel centres.
        lo = min(0.5 * cos, (size - 0.5) * cos) + min(0.5 * sin, (size - 0.5) * sin)
        span = abs(cos) * (size - 1) + abs(sin) * (size - 1)
        t = (c * np.float32(cos / span))[None, :] + (c * np.float32(sin / span) - np.float32(lo / span))[:, None]
    elif name in ("stripes", "checker"):
        # Hard edges: evaluate at 2x and average 2x2 blocks for anti-aliasing.
        c = _grid(size, 2)
        if name == "stripes":
            angle = rng.uniform(0, np.pi)
            period = rng.uniform(0.12, 0.25) * size
            # A whole number of periods keeps the sum positive, so truncation to int
            # is floor (whose parity picks the stripe); plus a random phase.
            offset = math.ceil(size / period) + rng.random()
            px = c * np.float32(math.cos(angle) / period) + np.float32(offset)
            py = c * np.float32(math.sin(angle) / period)
            t2 = (px[None, :] + py[:, None]).astype(np.int32) & 1
        else:
            cell = rng.uniform(0.1, 0.2) * size
            fx = (c / np.float32(cell) + np.float32(rng.random())).astype(np.int32)
            fy = (c / np.float32(cell) + np.float32(rng.random())).astype(np.int32)
            t2 = (fx[None, :] + fy[:, None]) & 1
        t = _pool2(t2).astype(np.float32) * np.float32(0.25)
    elif name == "noise":  # independent per pixel
        t = rng.random((size, size), dtype=np.float32)
    else:
        raise ValueError(f"unknown texture id {texture}")
    mean = np.float32(t.mean())
    t = (t - mean) * np.float32(TEXTURE_CONTRAST) + mean
    return np.multiply.outer(t, c1 - c0) + c0


def _place(rng: np.random.Generator, shape: int, size: int, radius_range: tuple[float, float]):
    """Sample a placement of ``shape`` and rasterise it on the 2x grid.

    Returns (centre_x, centre_y, slice_y, slice_x, inside): ``inside`` (bool)
    covers the 2x-grid box given by the slices, whose corners lie on even 2x
    indices, so the box maps onto whole output pixels.
    """
    r = rng.uniform(*radius_range) * size
    extent = _EXTENT * r
    gap = _MIDLINE_GAP * size
    # Per axis: a side of the midline, then a distance from it that keeps the shape
    # inside (scalar draws: the vector forms cost more on arrays this small).
    cx, cy = (
        size / 2 + (1 if rng.random() < 0.5 else -1) * rng.uniform(gap, size / 2 - extent) for _ in range(2)
    )
    angle = rng.uniform(0, 2 * np.pi)
    x0, x1 = max(0, math.floor(cx - extent)), min(size, math.ceil(cx + extent))
    y0, y1 = max(0, math.floor(cy - extent)), min(size, math.ceil(cy + extent))
    sy, sx = slice(2 * y0, 2 * y1), slice(2 * x0, 2 * x1)
    # Object frame, in units of r: rotate the 1-D offsets, then broadcast.
    c = _grid(size, 2)
    dx = (c[sx] - np.float32(cx)) / np.float32(r)
    dy = (c[sy] - np.float32(cy)) / np.float32(r)
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u = (dx * cos)[None, :] + (dy * sin)[:, None]
    v = (dy * cos)[:, None] - (dx * sin)[None, :]
    return cx, cy, sy, sx, _inside(shape, u, v)


def render_scene(seed: int, split_id: int, index: int, size: int = 32) -> tuple[np.ndarray, dict]:
    """Render scene ``index`` of split ``split_id`` (0 train, 1 val) for ``seed``.

    Returns:
        image: uint8 (size, size, 3) RGB.
        targets: dict with
            ``label`` (int): class of the largest object (by its own un-occluded
                area; the first drawn on ties),
            ``present`` (float32 (10,)): multi-hot classes of the drawn objects,
            ``color`` (int): hue bin (0..7, equal bins over the hue circle) of
                the largest object's colour,
            ``position`` (int): quadrant of the largest object's centre
                (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right),
            ``count`` (int): number of objects drawn (1..3),
            ``background`` (int): texture id (index into ``TEXTURES``),
            ``mask`` (int64 (size, size)): 0 background, class + 1 where an
                object covers at least half of the pixel, the last drawn wins.
    """
    if size < 8:
        raise ValueError(f"scenes size must be at least 8 pixels, got {size}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, index]))
    texture = int(rng.integers(len(TEXTURES)))
    image = _background(rng, texture, size)
    owner = np.full((2 * size, 2 * size), -1, dtype=np.int8)  # top-most object per 2x-grid point
    mask = np.zeros((size, size), dtype=np.int64)

    wanted = int(rng.integers(1, _MAX_OBJECTS + 1))
    hue_bins = rng.permutation(NUM_HUE_BINS)[:wanted].tolist()
    shapes, areas, visible, bins, centres = [], [], [], [], []
    for k in range(wanted):
        shape = int(rng.integers(len(SHAPES)))
        hue = (hue_bins[k] + rng.uniform(0.15, 0.85)) / NUM_HUE_BINS
        colour = _rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
        for _ in range(_PLACEMENT_TRIES):
            cx, cy, sy, sx, inside = _place(rng, shape, size, _MAIN_RADIUS if k == 0 else _DISTRACTOR_RADIUS)
            # 2x-grid points of each earlier object this one would cover.
            covered = np.bincount(owner[sy, sx][inside] + 1, minlength=len(shapes) + 1)[1:].tolist()
            if all(visible[j] - covered[j] >= _MIN_VISIBLE * areas[j] for j in range(len(shapes))):
                break
        else:
            continue  # no placement keeps the others visible enough: drop this object
        owner[sy, sx][inside] = len(shapes)
        # Composite at output resolution with the 2x2 coverage as alpha (anti-aliased edges).
        coverage = _pool2(inside.view(np.uint8))  # 0..4
        oy, ox = slice(sy.start // 2, sy.stop // 2), slice(sx.start // 2, sx.stop // 2)
        patch = image[oy, ox]
        patch += (coverage.astype(np.float32) * 0.25)[..., None] * (colour - patch)
        mask[oy, ox][coverage >= 2] = shape + 1
        visible = [vis - cov for vis, cov in zip(visible, covered)]
        area = int(np.count_nonzero(inside))
        shapes.append(shape)
        areas.append(area)
        visible.append(area)
        bins.append(hue_bins[k])
        centres.append((cx, cy))

    largest = int(np.argmax(areas))
    cx, cy = centres[largest]
    present = np.zeros(len(SHAPES), dtype=np.float32)
    present[shapes] = 1.0
    targets = {
        "label": shapes[largest],
        "present": present,
        "color": bins[largest],
        "position": int(cx >= size / 2) + 2 * int(cy >= size / 2),
        "count": len(shapes),
        "background": texture,
        "mask": mask,
    }
    return (image + 0.5).astype(np.uint8), targets


@lru_cache(maxsize=4)
def _rendered_images(seed: int, split_id: int, size: int) -> dict[int, tuple[torch.Tensor, dict]]:
    """The memo of rendered items (index -> image, targets) that every data set of this seed,
    split and size shares in a process (image i does not depend on the number of images)."""
    return {}


class ScenesDataset(Dataset):
    """The ``scenes`` data set, rendered lazily item by item and kept in memory once rendered
    (about 4 KB per 32 px image with its mask: 40 MB for the default 10,000), so that every
    epoch after the first spends no time rendering. Data sets of the same seed, split and size
    share what is rendered (pretraining, the online k-NN and each evaluation row read the same
    images; the last 4 such keys are kept). Each data-loader worker process keeps its own copy;
    with ``data.num_workers: 0`` (the CPU demos) the main process does.

    Items are dicts: ``image`` uint8 (3, size, size), ``aspect`` 1.0, ``label``
    (int, class of the largest object), ``index``, ``failed`` 0, plus the
    targets of :func:`render_scene` as tensors: ``present`` float32 (10,),
    ``color``, ``position``, ``count``, ``background`` (ints) and ``mask``
    int64 (size, size).
    """

    def __init__(self, split: str = "train", size: int = 32, num_images: int | None = None, seed: int = 0):
        if split not in SPLIT_IDS:
            raise ValueError(f"scenes split must be one of {tuple(SPLIT_IDS)}, got {split!r}")
        if num_images is None:
            num_images = DEFAULT_NUM_IMAGES[split]
        if num_images < 1:
            raise ValueError(f"scenes num_images must be positive, got {num_images}")
        if size < 8:
            raise ValueError(f"scenes size must be at least 8 pixels, got {size}")
        self.split = split
        self.split_id = SPLIT_IDS[split]
        self.size = size
        self.num_images = num_images
        self.seed = seed
        self.classes = list(SHAPES)
        self._rendered = _rendered_images(seed, self.split_id, size)

    def _render(self, index: int) -> tuple[torch.Tensor, dict]:
        """(image uint8 (3, size, size), targets with the mask as uint8), memoised."""
        if index not in self._rendered:
            image, targets = render_scene(self.seed, self.split_id, index, self.size)
            targets["mask"] = targets["mask"].astype(np.uint8)  # values 0..10: an eighth of the int64 memory
            self._rendered[index] = (torch.from_numpy(image).permute(2, 0, 1).contiguous(), targets)
        return self._rendered[index]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_images:
            raise IndexError(f"scenes index {index} out of range for {self.num_images} images")
        image, t = self._render(index)
        return {
            "image": image.clone(),
            "aspect": 1.0,
            "label": t["label"],
            "index": index,
            "failed": 0,
            "present": torch.from_numpy(t["present"].copy()),
            "color": t["color"],
            "position": t["position"],
            "count": t["count"],
            "background": t["background"],
            "mask": torch.from_numpy(t["mask"]).long(),
        }
