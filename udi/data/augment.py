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
    # f is a fraction of the colour circle; kornia works in radians.
    return adjust_hue(x, f * (2 * math.pi)).clamp(0.0, 1.0)


class Photometric:
    """DINO photometric recipe with per-sample random decisions, batched.

    Per sample: colour jitter (brightness, contrast, saturation, hue) with
    probability ``jitter_p`` (factors drawn per sample, the order of the four
    operations is one random permutation per call), grayscale with ``gray_p``;
    then half of the samples get Gaussian blur with probability 1.0 or 0.5
    (each half of the time) and the other half blur with probability 0.1 and
    solarisation (threshold 0.5) with probability ``solarize_p``.

    Every operation runs on the whole batch and is selected per sample with a
    mask, so nothing loops over images.
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

        # The masks live on the CPU, so skipping unused operations costs no device sync.
        if do_jitter.any():
            ops = (_brightness, _contrast, _saturation, _hue)
            y = x
            for i in order:
                y = ops[i](y, factors[i].to(device=dev, dtype=x.dtype))
            x = torch.where(_per_sample(do_jitter.to(dev)), y, x)
        if do_gray.any():
            x = torch.where(_per_sample(do_gray.to(dev)), rgb_to_grayscale(x).expand_as(x), x)
        if do_blur.any():
            k = self._kernel_size(x.shape[-2], x.shape[-1])
            s = sigma.to(device=dev, dtype=x.dtype)[:, None].expand(-1, 2)
            x = torch.where(_per_sample(do_blur.to(dev)), gaussian_blur2d(x, k, s), x)
        if do_solarize.any():
            x = torch.where(_per_sample(do_solarize.to(dev)) & (x >= 0.5), 1.0 - x, x)
        return x


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
