"""Bootleg loss: regress the EMA teacher's hidden states of several blocks at masked patches.

Targets (docs/methods.md section 5): for each target block i, the teacher's *hidden state* of
block i = that block's output tokens, before the backbone's final LayerNorm (what
``VisionTransformer.forward_intermediates(norm=False)`` returns, also for the last block),
layer-normalised without affine parameters over the channels, at the target patches; the
layers are concatenated along the channels in the order of ``layers``. Using the pre-norm
output for every layer treats all of them alike; for the last block it differs from I-JEPA's
target (LN of the final-norm output) only by the final norm's per-channel affine.

Loss: smooth-L1 (beta 1, as I-JEPA), MSE or L1, averaged over every target patch and
channel; the per-layer means are returned too (for the log). No state: nothing to register.

Shapes: B images, N patches, D channels, n_t target blocks of K patches, L target layers.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = ("smooth_l1", "mse", "l1")
AUTO_LAYERS = "auto"


def resolve_target_layers(value: str | Sequence[int], depth: int) -> list[int]:
    """The 0-based block indices of the targets.

    ``"auto"``: the blocks at depths L/4, L/2, 3L/4 and L of a depth-L backbone (depth d is
    block d - 1; d rounded half up, at least 1, duplicates dropped): [2, 5, 8, 11] for L = 12,
    [0, 1, 2, 3] for L = 4. A list: distinct block indices in [0, L), kept in its order.
    Raises ``ValueError`` naming ``bootleg.target_layers`` otherwise.
    """
    if value == AUTO_LAYERS:
        depths = [max(1, int(k * depth / 4 + 0.5)) for k in (1, 2, 3, 4)]
        return list(dict.fromkeys(d - 1 for d in depths))
    ok = (
        isinstance(value, (list, tuple)) and len(value) > 0
        and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < depth for i in value)
        and len(set(value)) == len(value)
    )
    if not ok:
        raise ValueError(
            f"'bootleg.target_layers' must be \"auto\" or a non-empty list of distinct 0-based block "
            f"indices in [0, {depth - 1}] (this backbone has {depth} blocks); got {value!r}"
        )
    return list(value)


def teacher_targets(hidden: Sequence[Tensor], targets: Tensor) -> Tensor:
    """Regression targets at the target patches.

    Args:
        hidden: one (B, N, D) tensor per target layer: the teacher's patch tokens of that block
            (block output before the final norm, class tokens removed).
        targets: (B, n_t, K) patch indices of the target blocks.

    Returns:
        (n_t * B, K, L * D), block-major like the predictor's output (row ``j * B + b`` is
        block j of image b); channels ``[l * D, (l + 1) * D)`` are layer ``l``, normalised.
    """
    b, n_t, k = targets.shape
    index = targets.reshape(b, n_t * k, 1)
    parts = []
    for h in hidden:
        picked = h.gather(1, index.expand(-1, -1, h.shape[-1]))  # (B, n_t * K, D)
        parts.append(F.layer_norm(picked.float(), (h.shape[-1],)))
    out = torch.cat(parts, dim=-1)  # (B, n_t * K, L * D)
    return out.reshape(b, n_t, k, -1).transpose(0, 1).reshape(n_t * b, k, -1)


class BootlegLoss(nn.Module):
    """Regression of multi-layer teacher targets.

    Args:
        layers: 0-based teacher block indices, in the order of the concatenation.
        loss: ``"smooth_l1"``, ``"mse"`` or ``"l1"``.
    """

    def __init__(self, layers: Sequence[int], loss: str = "smooth_l1"):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"'bootleg.loss' must be one of {', '.join(LOSSES)}; got {loss!r}")
        self.layers = list(layers)
        self.loss = loss

    @property
    def term_names(self) -> tuple[str, ...]:
        """``("loss", "block{i}", ...)``: the total, then one term per target layer."""
        return ("loss", *(f"block{i}" for i in self.layers))

    def targets(self, hidden: Sequence[Tensor], targets: Tensor) -> Tensor:
        """See :func:`teacher_targets`."""
        return teacher_targets(hidden, targets)

    def forward(self, predictions: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """predictions, targets: (n_t * B, K, L * D) -> {"loss": scalar, "block{i}": scalar per layer}.

        The total is the mean over every element, i.e. the mean of the per-layer terms."""
        if predictions.shape != targets.shape:
            raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ")
        predictions, targets = predictions.float(), targets.float()
        if self.loss == "smooth_l1":
            error = F.smooth_l1_loss(predictions, targets, reduction="none", beta=1.0)
        elif self.loss == "mse":
            error = F.mse_loss(predictions, targets, reduction="none")
        else:
            error = F.l1_loss(predictions, targets, reduction="none")
        per_layer = error.unflatten(-1, (len(self.layers), -1)).mean(dim=(0, 1, 3))  # (L,)
        terms = {"loss": per_layer.mean()}
        terms.update({f"block{i}": value for i, value in zip(self.layers, per_layer)})
        return terms
