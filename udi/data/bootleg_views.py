"""Bootleg's training batch: one view per image (random resized crop + horizontal flip, as
I-JEPA: no multi-crop, no colour augmentation) and its multi-block masks.

Built batched on tensors with the crop functions of :mod:`udi.data.augment` and
:mod:`udi.data.views`; all randomness comes from an explicit CPU ``torch.Generator``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from udi.data.augment import crop_resize, normalize, to_float
from udi.data.masking import BlockMasks, MaskSpec, sample_block_masks
from udi.data.views import sample_crop_boxes

CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default, as I-JEPA


@dataclass
class BootlegBatch:
    """B images, one view each, with the masks of :func:`udi.data.masking.sample_block_masks`."""

    images: Tensor  # (B, 3, S, S) normalised
    masks: BlockMasks  # context (B, Nc) and targets (B, n_targets, K), on the images' device


def make_bootleg_batch(
    canvas: Tensor,
    aspect: Tensor,
    size: int,
    crop_scale: tuple[float, float],
    flip: bool,
    mask_spec: MaskSpec,
    generator: torch.Generator,
) -> BootlegBatch:
    """One training batch of Bootleg.

    Random draws, in order: crop boxes, flips, then the masks.

    Args:
        canvas: (B, 3, H, W) uint8 or float in [0, 1], whole images (any device).
        aspect: (B,) original width / height.
        size: output side S (a multiple of the patch size; ``mask_spec.grid`` = S / patch).
        crop_scale: range of the crop area relative to the image area.
        flip: flip each view horizontally with probability 0.5.
        mask_spec: masking settings.
        generator: CPU generator.

    Returns:
        The views and masks, on ``canvas``'s device.
    """
    device = canvas.device
    b = canvas.shape[0]
    boxes = sample_crop_boxes(aspect, 1, crop_scale, CROP_RATIO, generator)[:, 0].cpu()  # (B, 4)
    flipped = torch.rand(b, generator=generator) < 0.5
    if flip:
        boxes = torch.where(flipped[:, None], boxes[:, [2, 1, 0, 3]], boxes)
    images = normalize(crop_resize(to_float(canvas), boxes.to(device), size))
    masks = sample_block_masks(b, mask_spec, generator)
    masks.context, masks.targets = masks.context.to(device), masks.targets.to(device)
    return BootlegBatch(images=images, masks=masks)
