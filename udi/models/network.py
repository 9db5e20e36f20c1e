"""Student and teacher networks of UDI / DINO: backbone + SRS module + projection head(s).

One ``forward`` per role so that DistributedDataParallel wraps the student as one module.
Notation as in ``udi.losses.udi``: B images, L local views, Sg / Sl sampled points,
Ng patches of a global view, D embed dim, K head output dim.
"""

from __future__ import annotations

import torch
from torch import nn

from udi.losses.distill import group_means
from udi.losses.udi import StudentLogits, TeacherLogits
from udi.models.heads import DINOHead
from udi.models.srs import SRSModule
from udi.models.vit import VisionTransformer


class UDINetwork(nn.Module):
    """Backbone with ``n_cls`` class tokens, optional SRS module, one shared head (or three).

    Args:
        extra_token: the backbone has a second class token [cls+] and the network returns its logits.
        srs: build the SRS module (needed when the [cls+] or patch level is on).
        shared_head: one head for all levels; False builds ``head_plus`` and ``head_patch`` too.
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        head_kwargs: dict,
        extra_token: bool,
        srs: bool,
        shared_head: bool = True,
        srs_heads: int | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.extra_token = extra_token
        dim = backbone.embed_dim
        self.head = DINOHead(dim, **head_kwargs)
        self.srs = SRSModule(dim, srs_heads or backbone.num_heads) if srs else None
        self.head_plus = None if shared_head or not extra_token else DINOHead(dim, **head_kwargs)
        self.head_patch = None if shared_head or not srs else DINOHead(dim, **head_kwargs)

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> normed class tokens (B, n_cls, D), pre-norm patch tokens (B, N, D)."""
        hidden = self.backbone.forward_blocks(images)
        n_cls = self.backbone.n_cls
        return self.backbone.norm(hidden[:, :n_cls]), hidden[:, n_cls:]

    def _heads(self, cls: torch.Tensor, cls_plus: torch.Tensor | None, patch: torch.Tensor | None):
        """Project rows through the head(s); with a shared head in one call (one big matmul)."""
        parts = [x for x in (cls, cls_plus, patch) if x is not None]
        if self.head_plus is None and self.head_patch is None:
            outs = iter(self.head(torch.cat(parts)).split([len(x) for x in parts]))
            return tuple(next(outs) if x is not None else None for x in (cls, cls_plus, patch))
        head_plus = self.head_plus or self.head
        head_patch = self.head_patch or self.head
        return (
            self.head(cls),
            None if cls_plus is None else head_plus(cls_plus),
            None if patch is None else head_patch(patch),
        )

    def forward_student(
        self,
        globals_: torch.Tensor,
        locals_: torch.Tensor | None,
        select_weights: torch.Tensor | None,
        valid_global: torch.Tensor | None = None,
    ) -> StudentLogits:
        """globals_: (2B, 3, Gs, Gs); locals_: (L*B, 3, Ls, Ls) or None;
        select_weights: (B, Sg, Ng) one-hot rows of the SRS selection, or None (no patch level);
        valid_global: (2, B, Sg) bool, which points of global view u lie in view 1-u (needed
        with select_weights). Only those points enter the loss, so the head runs on them alone:
        ``patch`` is (P, K), the rows of ``valid_global``'s True entries in row-major order."""
        if select_weights is not None and valid_global is None:
            raise ValueError("forward_student needs valid_global with select_weights")
        cls_g, patches_g = self._encode(globals_)
        cls_tokens = [cls_g]
        if locals_ is not None and len(locals_):
            cls_tokens.append(self._encode(locals_)[0])
        cls_tokens = torch.cat(cls_tokens)  # (V*B, n_cls, D)
        srs_out = None
        if select_weights is not None:
            weights = select_weights.repeat(2, 1, 1)  # the same mask for both global views
            srs_out = self.srs(patches_g, weights)  # (2B, Sg, D)
            srs_out = srs_out[valid_global.flatten(0, 1)]  # (P, D): rows (u, b, i) in valid_global's order
        cls_plus = cls_tokens[:, 1] if self.extra_token else None
        logits_cls, logits_plus, logits_patch = self._heads(cls_tokens[:, 0], cls_plus, srs_out)
        return StudentLogits(cls=logits_cls, cls_plus=logits_plus, patch=logits_patch, cls_features=cls_g[:, 0])

    def forward_teacher(
        self,
        globals_: torch.Tensor,
        map_global: torch.Tensor | None = None,
        valid_global: torch.Tensor | None = None,
        map_local: torch.Tensor | None = None,
        valid_local: torch.Tensor | None = None,
    ) -> TeacherLogits:
        """globals_: (2B, 3, Gs, Gs); map_global: (2, B, Sg, Ng), [u] = student view u onto
        teacher view 1-u; valid_global: (2, B, Sg) bool, which of those points count (needed
        with map_global); map_local: (L, 2, B, Sl, Ng), [j, v] = local j onto teacher view v;
        valid_local: (L, 2, B, Sl) bool (needed with map_local).

        Invalid points never enter the loss, so the head skips them: ``patch_global`` holds the
        logits of the valid global points only, (P, K) in ``valid_global``'s row-major order
        (the student's ``patch`` rows; the loss takes their mean per view and image itself).
        Local points only ever enter the loss as such a mean (the
        [cls+] target of a local view and the patch centre), and the head's last layer is
        linear, so their normalised bottleneck vectors are averaged per (local j, teacher view
        v, image b) and the K-wide last layer runs once per average: ``patch_local_mean``
        equals the mean of the per-point logits up to rounding, without the (L*Sl) x K ones.
        """
        cls, patches = self._encode(globals_)
        if map_global is None:
            return TeacherLogits(cls=self._heads(cls[:, 0], None, None)[0])
        n_local, sg = (map_local.shape[0] if map_local is not None else 0), map_global.shape[2]
        if valid_global is None:
            raise ValueError("forward_teacher needs valid_global with map_global")
        if n_local and valid_local is None:
            raise ValueError("forward_teacher needs valid_local with map_local")
        # Per teacher view v, queries of its partner global view (1-v) followed by all locals.
        queries = [map_global.flip(0)]  # (2, B, Sg, Ng) indexed by teacher view
        if n_local:
            queries.append(map_local.permute(1, 2, 0, 3, 4).flatten(2, 3))  # (2, B, L*Sl, Ng)
        queries = torch.cat(queries, dim=2).flatten(0, 1)  # (2B, S, Ng)
        points = self.srs(patches, queries).unflatten(0, (2, -1))  # (2 teacher views, B, S, D)
        two_b = len(cls)
        # the global points in student-view order u (read on teacher view 1-u), valid ones only
        rows = [points[:, :, :sg].flip(0)[valid_global]]  # (P, D)
        if n_local:
            valid_by_view = valid_local.permute(1, 2, 0, 3)  # (2, B, L, Sl)
            rows.append(points[:, :, sg:].unflatten(2, (n_local, -1))[valid_by_view])  # (Q, D)
        head_patch = self.head_patch or self.head
        shared = head_patch is self.head
        sizes = [len(r) for r in rows]
        if shared:  # one MLP call over every row (one big matmul), as in _heads
            z_cls, *z_points = self.head.bottleneck(torch.cat([cls[:, 0], *rows])).split([two_b, *sizes])
        else:
            z_cls, z_points = self.head.bottleneck(cls[:, 0]), head_patch.bottleneck(torch.cat(rows)).split(sizes)
        last = [z_points[0]]
        if n_local:
            last.append(group_means(z_points[1], valid_by_view).flatten(0, 2))  # (2*B*L, Db)
        if shared:
            logits = self.head.last_layer(torch.cat([z_cls, *last]))
            logits_cls, logits_patch = logits.split([two_b, len(logits) - two_b])
        else:
            logits_cls, logits_patch = self.head.last_layer(z_cls), head_patch.last_layer(torch.cat(last))
        patch_global = logits_patch[: sizes[0]]  # (P, K)
        patch_local_mean = None
        if n_local:
            local = logits_patch[sizes[0]:].unflatten(0, (2, -1, n_local))  # (2, B, L, K)
            patch_local_mean = local.permute(2, 0, 1, 3)  # (L, 2, B, K)
        return TeacherLogits(cls=logits_cls, patch_global=patch_global, patch_local_mean=patch_local_mean)

    def forward(self, role: str, *args):
        """``role`` is "student" or "teacher"; see forward_student / forward_teacher."""
        if role == "student":
            return self.forward_student(*args)
        return self.forward_teacher(*args)
