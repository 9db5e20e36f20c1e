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

from collections.abc import Sequence

from torch import Tensor, nn

from udi.models.frozen import frozen_copy
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
        return frozen_copy(BootlegNetwork(self.backbone, None, self.target_layers))
