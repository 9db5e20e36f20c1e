"""Training crops cut from the full-resolution image (``data.crops: full``), as the reference does.

The canvas path (``data.crops: canvas``) decodes each image onto a small square canvas and
cuts every crop from it on the device: cheap, and exact for images no larger than the
canvas (the built-in data sets), but a global crop of a 500 x 375 photo is then upsampled
from about 128 canvas pixels. Here the data loader decodes the image at full resolution and
resizes each crop box with PIL's antialiased bicubic filter, like DINO's and UDI's
``RandomResizedCrop``; the boxes are drawn per image from a generator seeded by
``(seed, epoch, index)``, so that they do not depend on the number of workers or processes
and a resumed run draws the same ones. Boxes are drawn from the file's header; a JPEG is then
decoded at the coarsest DCT scale (1, 1/2, 1/4, 1/8) at which every box still spans twice its
output side (``DRAFT_MARGIN``), which leaves ImageNet-size files at full resolution.

Box convention: that of :func:`udi.data.augment.crop_resize` (output pixel ``i`` of a crop of
side ``S`` samples the box at fraction ``i / (S - 1)``, pixel centres at ``0`` and ``1``), so
the correspondence maps of :mod:`udi.data.views` hold for these crops unchanged; each item
carries the boxes actually used (a box reaching past the image border is cut at it).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from udi.data.datasets import DEFAULT_MAX_IMAGE_PIXELS, decode_image, pil_to_tensor
from udi.data.views import ViewSpec, sample_views

CROP_MODES = ("auto", "canvas", "full")
# A JPEG is decoded at a reduced scale only where every crop box still spans this many times its
# output side in decoded pixels (a phone photo then decodes at 1/4 or 1/8: tens of ms less per image).
DRAFT_MARGIN = 2.0


def _edges(lo: float, hi: float, pixels: int, size: int, reduced_by: int) -> tuple[float, float, float, float]:
    """One axis: the normalised interval ``lo < hi`` of an image ``pixels`` wide -> PIL's box
    edges (pixel-edge coordinates of the image decoded at 1 / ``reduced_by``) that sample the
    same points, cut at the image border, and the normalised interval they sample."""
    span = max(pixels - 1, 1)
    step = (hi - lo) * span / (size - 1)  # distance between output samples, in original pixels
    first = lo * span + 0.5  # the first sample, in original pixel-edge coordinates
    start, stop = max(first - step / 2, 0.0), min(first - step / 2 + step * size, float(pixels))
    step = (stop - start) / size
    used = ((start + step / 2 - 0.5) / span, (stop - step / 2 - 0.5) / span)
    return start / reduced_by, stop / reduced_by, *used


def crop_image(image: Image.Image, box: Tensor | tuple[float, float, float, float], size: int,
               full_size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Cut ``box`` from ``image`` and resize it to ``size x size`` (antialiased bicubic).

    Args:
        image: an RGB PIL image: the image at full resolution, or decoded by JPEG at a reduced
            scale (1/2, 1/4, 1/8) of ``full_size``.
        box: normalised ``(x0, y0, x1, y1)`` (``x0 > x1``: flipped), the convention of
            ``crop_resize``, in the geometry of the full-resolution image.
        size: output side S (at least 2).
        full_size: ``(W, H)`` of the full-resolution image (None: ``image.size``).

    Returns:
        pixels: (3, S, S) uint8.
        used: (4,) float32, the box the pixels sample (``box`` unless it reached past the border).
    """
    if size < 2:
        raise ValueError(f"crop size must be at least 2, got {size}")
    x0, y0, x1, y1 = (float(v) for v in box)
    flip = x0 > x1
    if flip:
        x0, x1 = x1, x0
    w, h = full_size or image.size
    rx, ry = _reduction(image, (w, h))
    left, right, u0, u1 = _edges(x0, x1, w, size, rx)
    top, bottom, v0, v1 = _edges(y0, y1, h, size, ry)
    crop = image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, right, bottom))
    if flip:
        crop, (u0, u1) = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (u1, u0)
    return pil_to_tensor(crop), torch.tensor((u0, v0, u1, v1), dtype=torch.float32)


def _reduction(image: Image.Image, full_size: tuple[int, int]) -> tuple[int, int]:
    """The JPEG scale denominators (1, 2, 4, 8) at which ``image`` was decoded from ``full_size``."""
    return max(1, round(full_size[0] / image.size[0])), max(1, round(full_size[1] / image.size[1]))


def _draft_for(scale: float, width: int, height: int) -> tuple[int, int] | None:
    """The decoded size that keeps ``scale`` of the image (None: full resolution, no reduction by 2 fits)."""
    return None if scale > 0.5 else (math.ceil(width * scale), math.ceil(height * scale))


def draft_size(boxes: Tensor, sizes: list[int], width: int, height: int,
               margin: float = DRAFT_MARGIN) -> tuple[int, int] | None:
    """The smallest decoded size at which every box still spans ``margin`` times its output
    side in pixels (JPEG then decodes at 1/2, 1/4 or 1/8 where that allows it); None when
    no reduction by 2 allows it.

    Args:
        boxes: (V, 4) normalised boxes.
        sizes: output side of each box.
        width, height: the full-resolution image.
    """
    sides = torch.tensor(sizes, dtype=torch.float32)
    spans_x = (boxes[:, 2] - boxes[:, 0]).abs() * max(width - 1, 1)
    spans_y = (boxes[:, 3] - boxes[:, 1]).abs() * max(height - 1, 1)
    scale = float(torch.maximum(sides / spans_x, sides / spans_y).max()) * margin  # needed fraction of the image
    return _draft_for(scale, width, height)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one image's boxes: distinct for every (run seed, epoch, data set index)."""
    return ((seed * 1_000_003 + epoch) * 100_000_007 + index) % (2**63)


class FullResolutionViews:
    """The UDI (and DINO) crops of one image, cut from it at full resolution.

    Called by a data set on a file (path or bytes) and its index; returns the item fields
    ``{"globals": (2, 3, Gs, Gs) uint8, "locals": (L, 3, Ls, Ls) uint8, "boxes": (2 + L, 4),
    "aspect": W / H}``. The photometric augmentation, SRS masks and correspondence maps are
    made on the batch afterwards (:func:`udi.data.views.views_from_crops`).
    """

    def __init__(self, spec: ViewSpec, seed: int, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self.spec, self.seed, self.max_image_pixels = spec, seed, max_image_pixels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose boxes are drawn (set before each epoch's data loader starts)."""
        self.epoch = epoch

    def __call__(self, source: str | Path | bytes, index: int) -> dict:
        spec, generator = self.spec, torch.Generator().manual_seed(item_seed(self.seed, self.epoch, index))
        sizes = [spec.global_size] * 2 + [spec.local_size] * spec.n_local
        drawn = {}

        def draft(width: int, height: int) -> tuple[int, int] | None:
            # The boxes need only the file's ratio: draw them from the header, then decode as finely as they need.
            drawn["boxes"] = sample_views(torch.tensor([width / height]), spec, generator)[0]
            return draft_size(drawn["boxes"], sizes, width, height)

        image, full_size = decode_image(source, self.max_image_pixels, draft=draft)
        crops = [crop_image(image, box, size, full_size) for box, size in zip(drawn["boxes"], sizes)]
        pixels = [c[0] for c in crops]
        locals_ = torch.stack(pixels[2:]) if spec.n_local else torch.zeros(0, 3, spec.local_size, spec.local_size,
                                                                          dtype=torch.uint8)
        return {"globals": torch.stack(pixels[:2]), "locals": locals_, "boxes": torch.stack([c[1] for c in crops]),
                "aspect": full_size[0] / full_size[1]}


class CenterCropViews:
    """The evaluation input of one image (``udi eval`` / ``udi embed`` / ``udi.load(...).transform``
    on a folder), cut from it at full resolution: the reference's (DINO's eval) pixels.

    The reference resizes the shorter side to ``R = round(size / crop_fraction)`` (256 for 224 and
    0.875; the longer side truncated, as torchvision's ``Resize``) with an antialiased bicubic
    filter and cuts the centred ``size x size`` square (torchvision's ``CenterCrop`` rounding). Here
    that square is mapped back to the original image and resized in one step by PIL (same filter,
    same scale: equal to the two steps up to rounding). It is the centred square of ``crop_fraction``
    of the shorter side that ``udi.data.augment.center_box`` describes, placed to within a pixel of
    the original as the reference places it. A JPEG is decoded at a reduced scale only while the
    square still spans ``DRAFT_MARGIN`` times ``size`` decoded pixels. Called by a data set on a
    file (path or bytes) and its index, it returns the item fields ``{"image": (3, S, S) uint8,
    "aspect": W / H, "cropped": True}``: the feature extraction takes such items as they are
    (``udi.eval.features.eval_crops``).
    """

    def __init__(self, size: int, crop_fraction: float = 0.875, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        if size < 2:
            raise ValueError(f"crop size must be at least 2, got {size}")
        self.size, self.crop_fraction, self.max_image_pixels = size, crop_fraction, max_image_pixels

    def box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """PIL's box (pixel-edge coordinates of the ``width x height`` image) of the crop."""
        short = max(round(self.size / self.crop_fraction), self.size)
        if width <= height:
            resized = (short, max(int(short * height / width), short))
        else:
            resized = (max(int(short * width / height), short), short)
        left, top = (int(round((n - self.size) / 2.0)) for n in resized)
        sx, sy = width / resized[0], height / resized[1]
        return left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy

    def __call__(self, source: str | Path | bytes, index: int = 0) -> dict:
        def draft(width: int, height: int) -> tuple[int, int] | None:
            left, top, right, bottom = self.box(width, height)
            scale = DRAFT_MARGIN * self.size / min(right - left, bottom - top)  # needed fraction of the image
            return _draft_for(scale, width, height)

        image, full_size = decode_image(source, self.max_image_pixels, draft=draft)
        return self.crop(image, full_size)

    def crop(self, image: Image.Image, full_size: tuple[int, int] | None = None) -> dict:
        """The item fields of an RGB PIL ``image`` (decoded at a reduced scale of ``full_size``, or
        at full resolution)."""
        width, height = full_size or image.size
        rx, ry = _reduction(image, (width, height))
        left, top, right, bottom = self.box(width, height)
        crop = image.resize((self.size, self.size), Image.Resampling.BICUBIC,
                            box=(left / rx, top / ry, right / rx, bottom / ry))
        return {"image": pil_to_tensor(crop), "aspect": width / height, "cropped": True}

    def __repr__(self) -> str:
        return f"CenterCropViews(size={self.size}, crop_fraction={self.crop_fraction})"
