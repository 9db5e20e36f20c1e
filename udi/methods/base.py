"""The interface of a pretraining method: everything the training loop must not know by name.

A method owns, for itself: building the student, the teacher and the loss; turning a loader
batch into the inputs its step needs; the loss terms of a step; which modules the EMA
updates; its extra schedules; the names of its log terms; the config sections a resumed
run must share; the metadata of its exported backbone. The Trainer (``udi.train.loop``)
does the rest alike for every method: seeding, the optimiser and its schedules, precision,
backward, clipping, freezing the last layer, the EMA call, logging, checkpoints, resume, DDP.

Contract of the networks: the student and the teacher each have the backbone (a
``udi.models.vit.VisionTransformer``) as ``.backbone``, built first by ``build_student`` so
that a seed gives the same initial backbone whatever else the method builds; the teacher's
backbone is what a run exports. The loss is an ``nn.Module`` whose state lives in
registered buffers (it is checkpointed with ``state_dict``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from udi.models.frozen import frozen_copy


class Method(ABC):
    """One pretraining method, configured by a resolved config. Holds no modules: the
    Trainer owns the networks and the loss that the ``build_*`` methods return.

    Args:
        cfg: the resolved config (``udi.config.load_config``).
    """

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.name: str = cfg["method"]

    # ------------------------------------------------------------- building
    @abstractmethod
    def build_student(self) -> nn.Module:
        """The student network at its initial weights (drawn from the global RNG), with ``.backbone``."""

    def build_teacher(self, student: nn.Module) -> nn.Module:
        """The EMA teacher at step 0: by default a frozen copy of the whole student."""
        return frozen_copy(student)

    @abstractmethod
    def build_loss(self, student: nn.Module) -> nn.Module:
        """The loss module (state in registered buffers) for this student."""

    def ema_modules(self, teacher: nn.Module, student: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(EMA target, source): the teacher parameters the EMA updates and the student's
        matching ones, in the same order. By default the whole networks."""
        return teacher, student

    def find_unused_parameters(self, student: nn.Module) -> bool:
        """Whether some student parameters get no gradient (DistributedDataParallel must know)."""
        return False

    # ------------------------------------------------------------------ step
    def log_terms(self, loss_fn: nn.Module) -> tuple[str, ...]:
        """Names of the terms of ``loss_terms`` that are averaged over processes and logged
        (``"loss"`` first: the one that is backpropagated)."""
        return ("loss",)

    def schedules(self, epoch: int) -> dict[str, float]:
        """Values of this method's own schedules at ``epoch`` (logged, passed to ``loss_terms``)."""
        return {}

    def loader_views(self) -> Callable | None:
        """A callable (file, index) -> item fields that the data set uses instead of its canvas
        (``data.crops: full``; it has ``set_epoch``), or None. Default: None."""
        return None

    @abstractmethod
    def make_inputs(
        self, batch: dict, device: torch.device, generator: torch.Generator, schedules: dict[str, float]
    ) -> Any:
        """A loader batch (``image`` (B, 3, H, W) uint8 canvases, ``aspect`` (B,), ...) ->
        what ``loss_terms`` needs, on ``device``; random draws from ``generator`` only.
        ``schedules``: this step's values (the loop's and ``self.schedules``)."""

    @abstractmethod
    def loss_terms(
        self, model: nn.Module, teacher: nn.Module, loss_fn: nn.Module, inputs: Any, schedules: dict[str, float]
    ) -> dict[str, Tensor]:
        """The terms of one step: ``{"loss": scalar to backpropagate, other names: scalars}``.

        ``model`` is the student or its DistributedDataParallel wrapper: call it once, with
        the student's inputs. Runs under the Trainer's autocast; the teacher needs no gradient.
        """

    # ---------------------------------------------------------------- export
    def backbone_metadata(self) -> dict[str, str]:
        """Metadata of the exported teacher backbone (beside its format, architecture and step)."""
        return {"method": self.name}
