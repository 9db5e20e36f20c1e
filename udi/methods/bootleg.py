"""Bootleg (docs/methods.md section 5): predict the EMA teacher's hidden layers at masked patches.

Inputs of a step: one crop per image and its I-JEPA multi-block masks (context and target
patch indices, ``udi.data.bootleg_views``). Networks: the student is encoder + predictor,
the teacher an EMA copy of the encoder alone (``udi.models.bootleg_network``). Loss:
``udi.losses.bootleg.BootlegLoss`` (no state). No teacher temperature.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from udi.config import ConfigError
from udi.data.bootleg_views import BootlegBatch, make_bootleg_batch
from udi.data.masking import MaskSpec
from udi.losses.bootleg import BootlegLoss, resolve_target_layers
from udi.methods.base import Method
from udi.models.backbone import build_backbone
from udi.models.bootleg_network import BootlegNetwork
from udi.models.predictor import Predictor

# Logged beside the loss terms: context tokens per image (after truncation to the batch
# minimum) and the fraction of images whose context had to overlap a target.
MASK_TERMS = ("context_tokens", "relaxed")


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


class BootlegMethod(Method):
    """Self-distillation of hidden layers with masked prediction (``bootleg.*`` keys)."""

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        boot = cfg["bootleg"]
        self.size = cfg["views"]["global_size"]
        self.crop_scale = tuple(boot["crop_scale"])
        self.flip = boot["flip"]
        self.mask_spec = mask_spec(cfg)

    # ------------------------------------------------------------- building
    def build_student(self) -> BootlegNetwork:
        """Encoder (one class token, so that it is an ordinary backbone) + predictor."""
        backbone = build_backbone(self.cfg, n_cls=1)
        boot = self.cfg["bootleg"]
        try:
            layers = resolve_target_layers(boot["target_layers"], backbone.depth)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        dim = boot["predictor_dim"] or backbone.embed_dim // 2
        heads = boot["predictor_heads"] or backbone.num_heads
        if dim % heads or dim % 4:
            raise ConfigError(
                f"'bootleg.predictor_dim' ({dim}) must be a multiple of 4 and of 'bootleg.predictor_heads' ({heads}; "
                "null: the encoder's heads)"
            )
        predictor = Predictor(
            embed_dim=backbone.embed_dim,
            out_dim=len(layers) * backbone.embed_dim,
            grid=self.mask_spec.grid,
            depth=boot["predictor_depth"],
            dim=dim,
            num_heads=heads,
            mlp_ratio=backbone.mlp_ratio,
        )
        return BootlegNetwork(backbone, predictor, layers)

    def build_teacher(self, student: BootlegNetwork) -> BootlegNetwork:
        return student.make_teacher()  # the encoder alone: the predictor is not EMA'd

    def build_loss(self, student: BootlegNetwork) -> BootlegLoss:
        return BootlegLoss(student.target_layers, self.cfg["bootleg"]["loss"])

    def ema_modules(self, teacher: BootlegNetwork, student: BootlegNetwork) -> tuple[nn.Module, nn.Module]:
        return teacher.backbone, student.backbone

    # ------------------------------------------------------------------ step
    def log_terms(self, loss_fn: BootlegLoss) -> tuple[str, ...]:
        return (*loss_fn.term_names, *MASK_TERMS)

    def make_inputs(
        self, batch: dict, device: torch.device, generator: torch.Generator, schedules: dict[str, float]
    ) -> BootlegBatch:
        canvas = batch["image"].to(device, non_blocking=True)
        aspect = batch["aspect"].to(device, non_blocking=True)
        return make_bootleg_batch(canvas, aspect, self.size, self.crop_scale, self.flip, self.mask_spec, generator)

    def loss_terms(
        self, model: nn.Module, teacher: BootlegNetwork, loss_fn: BootlegLoss, inputs: BootlegBatch,
        schedules: dict[str, float],
    ) -> dict[str, Tensor]:
        """Teacher targets (no gradient), student predictions (n_t * B, K, L * D), loss terms:
        ``{"loss", "block{i}" per target layer, "context_tokens", "relaxed"}``."""
        masks = inputs.masks
        with torch.no_grad():
            targets = loss_fn.targets(teacher.teacher_hidden(inputs.images), masks.targets)
        terms = loss_fn(model(inputs.images, masks.context, masks.targets), targets)
        device = terms["loss"].device
        terms["context_tokens"] = torch.tensor(float(masks.context.shape[1]), device=device)
        terms["relaxed"] = masks.relaxed.float().mean().to(device)
        return terms
