"""UDI loss: three levels of self-distillation sharing one head (docs/methods.md section 3).

Notation: B images, L local views, V = 2 + L student views, Sg / Sl sampled
points of a global / local view, K head output dimension. Student views are
view-major (rows [vB:(v+1)B] are view v; views 0 and 1 are the global views).

- cls:   H(P_t(cls of v'), P_s(cls of u)) for every student view u and teacher global view v' != u.
- cls+:  H(P_t(t+(u, v')), P_s(cls+ of u)) with the multimodal target, blended in logit space,
         ``t+ = alpha * mean_valid_i T_patch(v', point i of u) + (1 - alpha) * T_cls(v')``.
         For local views u the teacher hands over that mean already taken (``patch_local_mean``):
         only it and the validity counts enter the loss and the patch centre, never the
         per-point logits (the network takes it in the head's bottleneck, before the K-wide
         linear last layer, see ``UDINetwork.forward_teacher``).
- patch: H(P_t(T_patch(v', i)), P_s(SRS_student(u, i))) over valid points, global student views only.
         Both networks hand over the logits of the P valid points alone (rows of
         ``valid_global``'s True entries, row-major), the invalid ones never reaching a head.

Each level is ``(2 * global_part + 2L * local_part) / (2 + 2L)``; the total is the mean of
the active levels. With the extra token and the patch level off, this is the DINO loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from udi.losses.distill import (check_centering, group_means, sinkhorn_probs, soft_cross_entropy, teacher_probs,
                                update_center)


@dataclass
class StudentLogits:
    cls: torch.Tensor  # (V*B, K)
    cls_plus: torch.Tensor | None = None  # (V*B, K)
    # (P, K): SRS logits at the student's own points of global view u that are valid, i.e. the rows
    # of valid_global (2, B, Sg)'s True entries (u, b, i) in row-major order
    patch: torch.Tensor | None = None
    cls_features: torch.Tensor | None = None  # (2*B, D): normed backbone [cls] of the global views (KoLeo)


@dataclass
class TeacherLogits:
    cls: torch.Tensor  # (2*B, K)
    # (P, K): T_patch at the valid points of student view u, read on teacher view 1-u (the rows of ``patch``)
    patch_global: torch.Tensor | None = None
    # (L, 2, B, K): [j, v, b] = mean over the valid points i of local j of T_patch(v, point i),
    # the teacher's patch logits on view v at local j's points (zeros where no point is valid)
    patch_local_mean: torch.Tensor | None = None


class UDILoss(nn.Module):
    """UDI's three-level loss; the three centres are registered buffers.

    Args:
        out_dim: K.
        n_local: L, local views per image.
        extra_token: the [cls+] level is on.
        patch_level: the patch level is on.
        alpha: weight of the patch profile in the [cls+] target.
        centering: "center" (running centres, docs/methods.md) or "sinkhorn" (each level's teacher
            targets balanced over the prototypes by Sinkhorn-Knopp: the 2B global [cls] rows
            together, all blended [cls+] targets together, the valid patch points together;
            the centres are then left untouched).
    """

    def __init__(
        self,
        out_dim: int,
        n_local: int,
        extra_token: bool = True,
        patch_level: bool = True,
        alpha: float = 0.5,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: str = "center",
        sinkhorn_iters: int = 3,
    ):
        super().__init__()
        self.centering = check_centering(centering)
        self.sinkhorn_iters = sinkhorn_iters
        self.n_local = n_local
        self.extra_token = extra_token
        self.patch_level = patch_level
        self.alpha = alpha
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center_cls", torch.zeros(1, out_dim))
        self.register_buffer("center_cls_plus", torch.zeros(1, out_dim))
        self.register_buffer("center_patch", torch.zeros(1, out_dim))

    @property
    def needs_teacher_patches(self) -> bool:
        return self.extra_token or self.patch_level

    def _targets(self, logits: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Teacher distributions of one level: (..., K) logits -> (..., K), every row taking part
        in the Sinkhorn balance (the patch level hands over its valid points alone)."""
        if self.centering == "center":
            return teacher_probs(logits, center, teacher_temp)
        rows = logits.flatten(0, -2)
        return sinkhorn_probs(rows, teacher_temp, self.sinkhorn_iters).view(logits.shape)

    def _combine(self, global_part: torch.Tensor, local_part: torch.Tensor | None) -> torch.Tensor:
        if local_part is None:
            return global_part
        n_local = self.n_local
        return (2 * global_part + 2 * n_local * local_part) / (2 + 2 * n_local)

    def forward(
        self,
        student: StudentLogits,
        teacher: TeacherLogits,
        valid_global: torch.Tensor | None,
        valid_local: torch.Tensor | None,
        teacher_temp: float,
    ) -> dict[str, torch.Tensor]:
        """Returns ``{"loss": total, "cls": ..., "cls_plus": ..., "patch": ...}`` (active terms only)
        and, when centring, updates the centres with the teacher outputs of this step.

        valid_global: (2, B, Sg) bool; valid_local: (L, 2, B, Sl) bool.
        """
        n_views = 2 + self.n_local
        t_cls = teacher.cls.float().unflatten(0, (2, -1))  # (2, B, K) per teacher view
        s_cls = student.cls.unflatten(0, (n_views, -1))  # (V, B, K)
        other = t_cls.flip(0)  # [u] = teacher view 1-u, the partner of student global view u
        terms: dict[str, torch.Tensor] = {}
        blend_g = blend_l = None

        # Level cls: each student view against each teacher global view that is not itself.
        probs = self._targets(t_cls, self.center_cls, teacher_temp)
        terms["cls"] = self._level(probs.flip(0), probs.unsqueeze(0), s_cls)

        if self.extra_token:
            patch_mean = group_means(teacher.patch_global, valid_global)  # (2, B, K), zeros where no point is valid
            blend_g = self.alpha * patch_mean + (1 - self.alpha) * other
            blend_g = torch.where(valid_global.any(-1, keepdim=True), blend_g, other)  # no valid point: cls alone
            blend_l = None
            if self.n_local:
                t_cls_l = t_cls.unsqueeze(0)  # (1, 2, B, K)
                blend_l = self.alpha * teacher.patch_local_mean.float() + (1 - self.alpha) * t_cls_l
                blend_l = torch.where(valid_local.any(-1, keepdim=True), blend_l, t_cls_l)
            s_plus = student.cls_plus.unflatten(0, (n_views, -1))
            if self.centering == "sinkhorn":  # one balance over every blended target (as one centre covers them)
                parts = [blend_g] + ([] if blend_l is None else [blend_l])
                rows = self._targets(torch.cat([p.flatten(0, -2) for p in parts]), None, teacher_temp)
                balanced = [r.view(p.shape) for r, p in zip(rows.split([p[..., 0].numel() for p in parts]), parts)]
                probs_g, probs_l = balanced[0], (balanced[1] if blend_l is not None else None)
            else:
                probs_g = self._targets(blend_g, self.center_cls_plus, teacher_temp)
                probs_l = None if blend_l is None else self._targets(blend_l, self.center_cls_plus, teacher_temp)
            terms["cls_plus"] = self._level(probs_g, probs_l, s_plus)

        if self.patch_level:
            probs = self._targets(teacher.patch_global, self.center_patch, teacher_temp)  # (P, K)
            ce = soft_cross_entropy(probs, student.patch, self.student_temp)  # (P,)
            terms["patch"] = ce.sum() / max(len(ce), 1)  # the mean over the batch's valid points

        terms["loss"] = sum(terms.values()) / len(terms)

        if self.centering == "center":
            self._update_centers(teacher, valid_local, blend_g, blend_l)
        return terms

    @torch.no_grad()
    def _update_centers(self, teacher: TeacherLogits, valid_local, blend_g, blend_l) -> None:
        """Centres move after the loss, with the teacher outputs of this step."""
        update_center(self.center_cls, teacher.cls, self.center_momentum)
        if self.extra_token:
            blends = [blend_g.flatten(0, -2)] + ([] if blend_l is None else [blend_l.flatten(0, -2)])
            update_center(self.center_cls_plus, blends, self.center_momentum)
        if self.needs_teacher_patches:
            patches, weights = [teacher.patch_global], [None]  # the valid global points, weight 1 each
            if self.n_local:  # sum over a local's valid points of T = count * their mean
                patches.append(teacher.patch_local_mean.flatten(0, -2))
                weights.append(valid_local.sum(-1).flatten())
            update_center(self.center_patch, patches, self.center_momentum, weights)

    def _level(self, global_probs: torch.Tensor, local_probs: torch.Tensor | None, student: torch.Tensor) -> torch.Tensor:
        """One image-level term.

        global_probs: (2, B, K) target of student global view u (teacher view 1-u);
        local_probs: (L or 1, 2, B, K) target of local j against teacher view v;
        student: (V, B, K) student logits of every view.
        """
        global_part = soft_cross_entropy(global_probs, student[:2], self.student_temp).mean()
        local_part = None
        if self.n_local:
            local_part = soft_cross_entropy(local_probs, student[2:].unsqueeze(1), self.student_temp).mean()
        return self._combine(global_part, local_part)
