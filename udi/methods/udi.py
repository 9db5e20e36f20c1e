"""UDI (docs/methods.md section 3), and DINO as its configuration with [cls+] and the patch level off.

Inputs of a step: two global and L local views of each image, the SRS points of each view
and the correspondence maps between views (``udi.data.views.make_udi_views``). Networks:
backbone + SRS module + one shared head (``udi.models.network.UDINetwork``); the teacher is
an EMA copy of the whole student. Loss: ``udi.losses.udi.UDILoss`` (state: its centres).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from udi.config import crop_mode
from udi.data.augment import photometric_from_config
from udi.data.crops import FullResolutionViews
from udi.data.views import UDIViews, ViewSpec, make_udi_views, one_hot_selection, views_from_crops
from udi.losses.koleo import koleo_loss
from udi.losses.udi import UDILoss
from udi.methods.base import Method
from udi.models.backbone import build_backbone
from udi.models.network import UDINetwork
from udi import schedules

TERMS = ("loss", "cls", "cls_plus", "patch")
HEAD_KEYS = ("out_dim", "hidden_dim", "bottleneck_dim", "nlayers", "norm_last_layer")


def view_spec(cfg: dict) -> ViewSpec:
    """The multi-crop and SRS settings of ``views.*`` (patch size from ``model.patch_size``)."""
    views, model = cfg["views"], cfg["model"]
    return ViewSpec(
        global_size=views["global_size"],
        local_size=views["local_size"],
        n_local=views["n_local"],
        patch_size=model["patch_size"],
        global_scale=tuple(views["global_scale"]),
        local_scale=tuple(views["local_scale"]),
        global_window=views["global_window"],
        local_window=views["local_window"],
        srs_mode=views["srs_mode"],
        shift=views["shift"],
    )


class UDIMethod(Method):
    """UDI's three levels of self-distillation; with both extra levels off, DINO.

    Args:
        cfg: the resolved config.
        extra_token: a second class token [cls+] trained on the multimodal target.
        patch_level: the SRS patch level of the loss.
    The SRS module exists when either is on ([cls+] targets read the teacher's SRS).
    """

    def __init__(self, cfg: dict, extra_token: bool, patch_level: bool):
        super().__init__(cfg)
        self.extra_token = extra_token
        self.patch_level = patch_level
        self.spec = view_spec(cfg)
        self.photometric = photometric_from_config(cfg["views"])
        self.koleo_weight = float(cfg["loss"]["koleo_weight"])

    def loader_views(self) -> FullResolutionViews | None:
        """``data.crops: full``: the data loader cuts this method's crops from the full-resolution images."""
        if crop_mode(self.cfg) != "full":
            return None
        return FullResolutionViews(self.spec, self.cfg["train"]["seed"], self.cfg["data"]["max_image_pixels"])

    @classmethod
    def udi(cls, cfg: dict) -> UDIMethod:
        """``method: udi``: the levels as ``udi.extra_token`` and ``udi.patch_level`` say."""
        return cls(cfg, extra_token=cfg["udi"]["extra_token"], patch_level=cfg["udi"]["patch_level"])

    @classmethod
    def dino(cls, cfg: dict) -> UDIMethod:
        """``method: dino``: the [cls] level alone (``udi.*`` is ignored)."""
        return cls(cfg, extra_token=False, patch_level=False)

    # ------------------------------------------------------------- building
    def build_student(self) -> UDINetwork:
        backbone = build_backbone(self.cfg, n_cls=2 if self.extra_token else 1)
        head = self.cfg["head"]
        return UDINetwork(
            backbone,
            {k: head[k] for k in HEAD_KEYS},
            extra_token=self.extra_token,
            srs=self.extra_token or self.patch_level,
            shared_head=head["shared"],
            srs_heads=self.cfg["udi"]["srs_heads"],
        )

    def build_loss(self, student: nn.Module) -> UDILoss:
        cfg, loss = self.cfg, self.cfg["loss"]
        return UDILoss(
            out_dim=cfg["head"]["out_dim"],
            n_local=cfg["views"]["n_local"],
            extra_token=self.extra_token,
            patch_level=self.patch_level,
            alpha=cfg["udi"]["alpha"],
            student_temp=loss["student_temp"],
            center_momentum=loss["center_momentum"],
            centering=loss["centering"],
            sinkhorn_iters=loss["sinkhorn_iters"],
        )

    def find_unused_parameters(self, student: nn.Module) -> bool:
        return student.srs is not None and not self.patch_level  # the student's SRS serves the patch level only

    # ------------------------------------------------------------------ step
    def log_terms(self, loss_fn: nn.Module) -> tuple[str, ...]:
        return (*TERMS, "koleo") if self.koleo_weight else TERMS

    def schedules(self, epoch: int) -> dict[str, float]:
        """The teacher temperature; with ``views.photometric_ramp_epochs`` also the strength of
        the colour augmentation (``photometric_strength``)."""
        loss, views = self.cfg["loss"], self.cfg["views"]
        values = {
            "teacher_temp": schedules.teacher_temperature(
                epoch, loss["warmup_teacher_temp"], loss["teacher_temp"], loss["warmup_teacher_temp_epochs"]
            )
        }
        if views["photometric_ramp_epochs"]:
            values["photometric_strength"] = schedules.linear_ramp(
                epoch, views["photometric_ramp_start"], 1.0, views["photometric_ramp_epochs"]
            )
        return values

    def make_inputs(
        self, batch: dict, device: torch.device, generator: torch.Generator, schedules: dict[str, float]
    ) -> UDIViews:
        photometric = self.photometric
        if "photometric_strength" in schedules:  # views.photometric_ramp_epochs
            photometric = photometric.at_strength(schedules["photometric_strength"])
        if "globals" in batch:  # data.crops: full (the data loader cut them from the full-resolution images)
            crops = [batch[key].to(device, non_blocking=True) for key in ("globals", "locals", "boxes")]
            return views_from_crops(*crops, self.spec, generator, photometric)
        canvas = batch["image"].to(device, non_blocking=True)
        aspect = batch["aspect"].to(device, non_blocking=True)
        return make_udi_views(canvas, aspect, self.spec, generator, photometric)

    def loss_terms(
        self, model: nn.Module, teacher: nn.Module, loss_fn: UDILoss, inputs: UDIViews, schedules: dict[str, float]
    ) -> dict[str, Tensor]:
        """Teacher forward (no gradient), student forward, the terms of ``TERMS`` (+ ``koleo``,
        the KoLeo term of each global view summed as in DINOv2, added to ``loss`` with its weight)."""
        views, has_locals = inputs, self.spec.n_local > 0
        patches = loss_fn.needs_teacher_patches
        with torch.no_grad():
            teacher_out = teacher.forward_teacher(
                views.globals_,
                views.map_global if patches else None,
                views.valid_global if patches else None,
                views.map_local if patches and has_locals else None,
                views.valid_local if patches and has_locals else None,
            )
        select = valid = None
        if loss_fn.patch_level:
            select = one_hot_selection(views.select_global, self.spec.global_grid).to(views.globals_.dtype)
            valid = views.valid_global
        student_out = model("student", views.globals_, views.locals_ if has_locals else None, select, valid)
        terms = loss_fn(
            student_out,
            teacher_out,
            views.valid_global if patches else None,
            views.valid_local if patches and has_locals else None,
            schedules["teacher_temp"],
        )
        if self.koleo_weight:
            terms["koleo"] = sum(koleo_loss(view) for view in student_out.cls_features.chunk(2))
            terms["loss"] = terms["loss"] + self.koleo_weight * terms["koleo"]
        return terms
