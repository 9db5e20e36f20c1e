"""Bootleg's networks: student = encoder + predictor, teacher = an EMA copy of the encoder alone.

The student encoder sees only the context patches (``VisionTransformer``'s ``keep``): no
mask token enters the encoder, which is where the method saves compute. The predictor
(:mod:`udi.models.predictor`) adds the mask tokens. The teacher encoder sees every patch
of the same view and gives the hidden states of the target blocks.

The backbone keeps one class token so that it is an ordinary ``udi`` backbone (export,
``load_backbone``, ``udi eval``). Bootleg trains no objective on it: it only takes part in
the encoder's attention, and the predictor receives the patch tokens alone. The natural
image feature of a Bootleg backbone is the mean patch token (``patch_mean``).

Shapes: B images, S crop side, N patches, Nc context patches, n_t target blocks of K
patches, D encoder width, L target layers.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import Tensor, nn

from udi.config import ConfigError
from udi.losses.bootleg import resolve_target_layers
from udi.models.predictor import Predictor
from udi.models.vit import VisionTransformer


class BootlegNetwork(nn.Module):
    """Encoder (``backbone``) and, for the student, the predictor.

    Args:
        backbone: the encoder.
        predictor: the predictor; ``None`` for the teacher.
        target_layers: 0-based block indices whose hidden states are predicted.
    """

    def __init__(self, backbone: VisionTransformer, predictor: Predictor | None, target_layers: Sequence[int]):
        super().__init__()
        self.backbone = backbone
        self.predictor = predictor
        self.target_layers = list(target_layers)

    def forward(self, images: Tensor, context: Tensor, targets: Tensor) -> Tensor:
        """Student: images (B, 3, S, S), context (B, Nc), targets (B, n_t, K) patch indices
        -> predictions (n_t * B, K, L * D), block-major (row ``j * B + b``: block j of image b)."""
        if self.predictor is None:
            raise RuntimeError("this is a teacher network (no predictor); use teacher_hidden")
        n_cls = self.backbone.n_cls
        tokens = self.backbone.forward_features(images, keep=context)[:, n_cls:]  # (B, Nc, D)
        return self.predictor(tokens, context, targets)

    def teacher_hidden(self, images: Tensor) -> list[Tensor]:
        """Images (B, 3, S, S) -> the patch tokens (B, N, D) of every target layer, block
        outputs before the final norm, in the order of ``target_layers``."""
        n_cls = self.backbone.n_cls
        hidden = self.backbone.forward_intermediates(images, self.target_layers, norm=False)
        return [h[:, n_cls:] for h in hidden]

    def make_teacher(self) -> BootlegNetwork:
        """A frozen copy of the encoder alone, in eval mode (the predictor is not EMA'd)."""
        teacher = BootlegNetwork(copy.deepcopy(self.backbone), None, self.target_layers).eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
        return teacher


def build_bootleg_network(cfg: dict) -> BootlegNetwork:
    """Student network of ``method: bootleg`` from a resolved config (see ``bootleg.*`` keys)."""
    from udi.models.network import build_backbone

    backbone = build_backbone(cfg, n_cls=1)
    boot = cfg["bootleg"]
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
    grid = cfg["views"]["global_size"] // cfg["model"]["patch_size"]
    predictor = Predictor(
        embed_dim=backbone.embed_dim,
        out_dim=len(layers) * backbone.embed_dim,
        grid=grid,
        depth=boot["predictor_depth"],
        dim=dim,
        num_heads=heads,
        mlp_ratio=backbone.mlp_ratio,
    )
    return BootlegNetwork(backbone, predictor, layers)
