"""Batched cropping and photometric augmentation on tensors, on any device.

Geometry convention (shared with :mod:`udi.data.views`): an image is addressed
by normalised coordinates ``u, v`` in ``[0, 1]`` where ``0`` and ``1`` are the
centres of the first and last pixel (``align_corners=True``). A box is
``(x0, y0, x1, y1)`` in those coordinates; ``x0 > x1`` means a horizontally
flipped crop. Output pixel ``i`` of a crop of size ``S`` samples the box at
fraction ``i / (S - 1)``, the same corner-aligned rule as the patch-grid points
of the correspondence maps.

All randomness comes from an explicit CPU ``torch.Generator``: decisions are
drawn on the CPU and then moved to the data's device, so a given generator
state gives the same augmentation on every device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from kornia.color import rgb_to_grayscale
from kornia.enhance import adjust_hue
from kornia.filters import gaussian_blur2d

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_scale_range(name: str, value: tuple[float, float]) -> None:
    """A range of area fractions ``(low, high)`` must satisfy ``0 < low <= high <= 1``."""
    lo, hi = value
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"{name}={(lo, hi)} must satisfy 0 < low <= high <= 1")


def to_float(images: Tensor) -> Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1]; float images are returned unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images


def crop_resize(images: Tensor, boxes: Tensor, size: int, mode: str = "bicubic") -> Tensor:
    """Crop each image to its box and resize it to ``size x size``.

    Args:
        images: (B, 3, H, W) float in [0, 1], or uint8 (converted to float).
        boxes: (B, 4) normalised ``(x0, y0, x1, y1)``; ``x0 > x1`` flips horizontally.
        size: output side, at least 2.
        mode: ``grid_sample`` interpolation (``"bicubic"``, ``"bilinear"``, ``"nearest"``).

    Returns:
        (B, 3, size, size) float in [0, 1]; pixel ``(i, j)`` samples the image at
        ``(x0 + (x1 - x0) j / (size-1), y0 + (y1 - y0) i / (size-1))``.
    """
    if size < 2:
        raise ValueError(f"crop size must be at least 2, got {size}")
    images = to_float(images)
    boxes = boxes.to(device=images.device, dtype=images.dtype)
    t = torch.linspace(0.0, 1.0, size, device=images.device, dtype=images.dtype)
    # Normalised box coordinates -> grid_sample's [-1, 1] (align_corners=True).
    lo, hi = boxes[:, None, :2] * 2 - 1, boxes[:, None, 2:] * 2 - 1  # (B, 1, 2) each, (x, y)
    pos = torch.lerp(lo, hi, t[:, None])  # (B, size, 2)
    xs, ys = pos[..., 0], pos[..., 1]
    grid = torch.stack(
        (xs[:, None, :].expand(-1, size, -1), ys[:, :, None].expand(-1, -1, size)), dim=-1
    )  # (B, size, size, 2)
    out = F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=True)
    # Bicubic overshoots near edges.
    return out.clamp_(0.0, 1.0)


def center_box(aspect: Tensor, fraction: float = 0.875) -> Tensor:
    """Evaluation crop "resize the shorter side, centre-crop ``fraction`` of it" as a box.

    Args:
        aspect: (B,) original width / height.
        fraction: side of the square crop relative to the shorter image side.

    Returns:
        (B, 4) normalised boxes, square in original pixels and centred.
    """
    aspect = aspect.to(torch.float32)
    # Units of the image height: the image is aspect x 1, the crop side s x s.
    side = fraction * aspect.clamp(max=1.0)
    half_w, half_h = side / aspect / 2, side / 2
    return torch.stack((0.5 - half_w, 0.5 - half_h, 0.5 + half_w, 0.5 + half_h), dim=-1)


def normalize(x: Tensor) -> Tensor:
    """ImageNet mean/std normalisation of (B, 3, h, w) images in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _per_sample(v: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) so it broadcasts over images."""
    return v.view(-1, 1, 1, 1)


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * _per_sample(f)).clamp(0.0, 1.0)


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    # Blend with the mean grey level of each image (torchvision's definition).
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _per_sample(f)
    return (f * x + (1 - f) * mean).clamp(0.0, 1.0)


def _saturation(x: Tensor, f: Tensor) -> Tensor:
    f = _per_sample(f)
    return (f * x + (1 - f) * rgb_to_grayscale(x)).clamp(0.0, 1.0)


def _hue(x: Tensor, f: Tensor) -> Tensor:
    """Rotate the hue by ``f`` (fraction of the colour circle), keeping HSV saturation and value.

    The same function as kornia's ``adjust_hue`` (RGB -> HSV, shift, HSV -> RGB; equal to about
    1e-6) in fewer passes: the value (max) and chroma (max - min) are unchanged by a hue
    rotation, so each output channel is ``max - chroma * clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + 6 h) mod 6`` (n = 5, 3, 1 for R, G, B; h the rotated hue in [0, 1))."""
    r, g, b = x.unbind(1)
    value, low = x.amax(1), x.amin(1)
    chroma = value - low
    safe = torch.where(chroma == 0, 1.0, chroma)
    # Sextant of the first maximal channel (kornia's tie-breaking), then the shift, in units of 60 degrees.
    sextant = torch.where((r >= g) & (r >= b), (g - b) / safe,
                          torch.where(g >= b, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = torch.remainder(sextant + 6.0 * _per_sample(f)[:, 0], 6.0)
    out = torch.empty_like(x)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = torch.remainder(hue + n, 6.0)
        out[:, channel] = value - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return out.clamp_(0.0, 1.0)


_COLOUR_OPS = (_brightness, _contrast, _saturation, _hue)  # indexed by the drawn order
_CHUNK_PIXELS = 4 * 96 * 96  # images per chunk on the CPU: about this many pixels (4 locals, 1 global)


class Photometric:
    """DINO photometric recipe with per-sample random decisions, batched.

    Per sample: colour jitter (brightness, contrast, saturation, hue) with
    probability ``jitter_p`` (factors drawn per sample, the order of the four
    operations is one random permutation per call), grayscale with ``gray_p``;
    then half of the samples get Gaussian blur with probability 1.0 or 0.5
    (each half of the time) and the other half blur with probability 0.1 and
    solarisation (threshold 0.5) with probability ``solarize_p``.

    All random decisions are drawn up front for the whole batch; each operation then runs
    only on the samples that drew it, a few images at a time on the CPU (so that they stay in
    cache through all the operations; one pass over the batch on a GPU). Every operation is
    per sample, so the result does not depend on that grouping.
    """

    def __init__(
        self,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_p: float = 0.2,
        enabled: bool = True,
    ):
        self.jitter = tuple(float(j) for j in jitter)
        self.jitter_p = jitter_p
        self.gray_p = gray_p
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.solarize_p = solarize_p
        self.enabled = enabled

    def __repr__(self) -> str:
        return (
            f"Photometric(jitter={self.jitter}, jitter_p={self.jitter_p}, gray_p={self.gray_p}, "
            f"blur_sigma={self.blur_sigma}, solarize_p={self.solarize_p}, enabled={self.enabled})"
        )

    def at_strength(self, strength: float) -> Photometric:
        """The recipe with the colour operations scaled by ``strength`` in [0, 1]: jitter
        magnitudes and the jitter, grayscale and solarisation probabilities (blur unchanged).
        The random draws stay the same in number and order, so a schedule keeps runs exact."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"photometric strength must be in [0, 1], got {strength}")
        return Photometric(
            jitter=tuple(j * strength for j in self.jitter),
            jitter_p=self.jitter_p * strength,
            gray_p=self.gray_p * strength,
            blur_sigma=self.blur_sigma,
            solarize_p=self.solarize_p * strength,
            enabled=self.enabled,
        )

    def _kernel_size(self, h: int, w: int) -> int:
        k = 2 * math.ceil(3 * self.blur_sigma[1]) + 1
        # Reflect padding needs the half kernel to be smaller than the image.
        largest = min(h, w) if min(h, w) % 2 == 1 else min(h, w) - 1
        return max(1, min(k, largest))

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augment a batch.

        Args:
            x: (B, 3, h, w) float in [0, 1].
            generator: CPU generator providing all random decisions.

        Returns:
            (B, 3, h, w) float in [0, 1] (not normalised).
        """
        if not self.enabled or x.shape[0] == 0:
            return x
        b, dev = x.shape[0], x.device

        def uniform(lo: float, hi: float) -> Tensor:
            return torch.rand(b, generator=generator) * (hi - lo) + lo

        # All draws happen up front, on the CPU, in a fixed order.
        br, co, sa, hu = self.jitter
        factors = [uniform(1 - br, 1 + br), uniform(1 - co, 1 + co), uniform(1 - sa, 1 + sa), uniform(-hu, hu)]
        order = torch.randperm(4, generator=generator).tolist()
        do_jitter = torch.rand(b, generator=generator) < self.jitter_p
        do_gray = torch.rand(b, generator=generator) < self.gray_p
        blur_branch = torch.rand(b, generator=generator) < 0.5
        blur_p = torch.where(torch.rand(b, generator=generator) < 0.5, 1.0, 0.5)
        u_blur = torch.rand(b, generator=generator)
        do_blur = torch.where(blur_branch, u_blur < blur_p, u_blur < 0.1)
        do_solarize = ~blur_branch & (torch.rand(b, generator=generator) < self.solarize_p)
        sigma = uniform(*self.blur_sigma)

        out = x.clone()
        step = b if x.device.type != "cpu" else max(1, _CHUNK_PIXELS // (x.shape[-2] * x.shape[-1]))
        k = self._kernel_size(x.shape[-2], x.shape[-1])
        for start in range(0, b, step):  # a few images at a time stay in cache through all the ops
            part = slice(start, start + step)
            chunk = out[part]

            def apply(mask: Tensor, op) -> None:
                # Each operation runs only on the samples that drew it (the masks live on the CPU).
                rows = mask[part].nonzero()[:, 0]
                if len(rows) == len(chunk):
                    chunk.copy_(op(chunk, rows))
                elif len(rows):
                    index = rows.to(dev)
                    chunk.index_copy_(0, index, op(chunk.index_select(0, index), rows))

            def jitter(y: Tensor, rows: Tensor) -> Tensor:
                for i in order:
                    y = _COLOUR_OPS[i](y, factors[i][part][rows].to(device=dev, dtype=x.dtype))
                return y

            def blur(y: Tensor, rows: Tensor) -> Tensor:
                s = sigma[part][rows].to(device=dev, dtype=x.dtype)[:, None].expand(-1, 2)
                return gaussian_blur2d(y, k, s)

            apply(do_jitter, jitter)
            apply(do_gray, lambda y, rows: rgb_to_grayscale(y).expand_as(y))
            apply(do_blur, blur)
            apply(do_solarize, lambda y, rows: torch.where(y >= 0.5, 1.0 - y, y))
        return out


def photometric_from_config(views: dict) -> Photometric:
    """The ``views`` section of a config -> its :class:`Photometric` recipe."""
    return Photometric(
        jitter=tuple(views["color_jitter"]),
        jitter_p=views["color_jitter_p"],
        gray_p=views["grayscale_p"],
        blur_sigma=tuple(views["blur_sigma"]),
        solarize_p=views["solarize_p"],
        enabled=views["photometric"],
    )
