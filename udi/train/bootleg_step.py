"""Bootleg's part of a training step (``method: bootleg``): its batch and its loss terms.

The Trainer (:mod:`udi.train.loop`) does the rest as for every method: per-step seeding,
schedules, autocast, backward, clipping, the optimiser step, the EMA of the teacher
(here the encoder alone), logging and checkpoints.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from udi.data.bootleg_views import BootlegBatch, make_bootleg_batch
from udi.data.masking import MaskSpec
from udi.losses.bootleg import BootlegLoss
from udi.models.bootleg_network import BootlegNetwork


def mask_spec(cfg: dict) -> MaskSpec:
    """The masking settings of ``bootleg.*`` on the patch grid of ``views.global_size``."""
    boot = cfg["bootleg"]
    return MaskSpec(
        grid=cfg["views"]["global_size"] // cfg["model"]["patch_size"],
        n_targets=boot["n_targets"],
        target_scale=tuple(boot["target_scale"]),
        target_aspect=tuple(boot["target_aspect"]),
        context_scale=tuple(boot["context_scale"]),
        min_context=boot["min_context"],
    )


class BootlegStep:
    """Builds Bootleg's batches and computes its loss terms.

    Args:
        cfg: the resolved config.
        target_layers: the student network's 0-based target block indices.
    """

    def __init__(self, cfg: dict, target_layers: list[int]):
        boot = cfg["bootleg"]
        self.size = cfg["views"]["global_size"]
        self.crop_scale = tuple(boot["crop_scale"])
        self.flip = boot["flip"]
        self.mask_spec = mask_spec(cfg)
        self.loss_fn = BootlegLoss(target_layers, boot["loss"])
        # Logged with the loss terms: context tokens per image (after truncation to the batch
        # minimum) and the fraction of images whose context had to overlap a target.
        self.log_names = (*self.loss_fn.term_names, "context_tokens", "relaxed")

    def make_batch(self, batch: dict, device: torch.device, generator: torch.Generator) -> BootlegBatch:
        """A loader batch (``image`` (B, 3, H, W) canvases, ``aspect`` (B,)) -> views and masks on ``device``."""
        canvas = batch["image"].to(device, non_blocking=True)
        aspect = batch["aspect"].to(device, non_blocking=True)
        return make_bootleg_batch(canvas, aspect, self.size, self.crop_scale, self.flip, self.mask_spec, generator)

    def losses(self, model: nn.Module, teacher: BootlegNetwork, inputs: BootlegBatch) -> dict[str, Tensor]:
        """Teacher targets (no gradient), student predictions, loss terms.

        ``model`` is the student (or its DistributedDataParallel wrapper): one forward call.
        Returns ``{"loss": scalar, "block{i}": scalar per target layer, "context_tokens",
        "relaxed"}`` (the last two for the log only).
        """
        masks = inputs.masks
        with torch.no_grad():
            targets = self.loss_fn.targets(teacher.teacher_hidden(inputs.images), masks.targets)
        predictions = model(inputs.images, masks.context, masks.targets)  # (n_t * B, K, L * D)
        terms = self.loss_fn(predictions, targets)
        device = terms["loss"].device
        terms["context_tokens"] = torch.tensor(float(masks.context.shape[1]), device=device)
        terms["relaxed"] = masks.relaxed.float().mean().to(device)
        return terms
