"""The pretraining loop: the same code on CPU, one GPU and torchrun DDP.

Randomness is a function of (seed, step, rank): every step reseeds the global RNG (drop
path) and builds a fresh generator for the views, and the sampler is seeded per epoch.
With the full training state in ``checkpoint.pt``, a resumed run repeats an uninterrupted
one exactly (on the CPU), mid-epoch included.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from udi.config import ConfigError, dump_config
from udi.data.augment import photometric_from_config
from udi.data.datasets import build_dataset
from udi.data.views import ViewSpec, make_udi_views, one_hot_selection
from udi.losses.udi import UDILoss
from udi.models.network import build_network
from udi.train import schedules
from udi.train.bootleg_step import BootlegStep
from udi.train.checkpoint import export_backbone, load_checkpoint, save_checkpoint
from udi.train.distributed import DistInfo, all_reduce_mean, barrier, init_distributed
from udi.train.optim import build_optimizer, cancel_last_layer_grads, ema_update, set_lr_wd
from udi.train.progress import TrainProgress
from udi.train.sampler import ResumableSampler

TERMS = ("loss", "cls", "cls_plus", "patch")  # udi / dino; bootleg: BootlegLoss.term_names
CHECKPOINT = "checkpoint.pt"
BACKBONE = "backbone.safetensors"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; names the step and the term."""


def check_finite(terms: dict[str, float], step: int) -> None:
    """Raise with the step and the first non-finite term (sub-terms first: they are the cause)."""
    for name in sorted(terms, key=lambda n: n == "loss"):
        if not math.isfinite(terms[name]):
            raise NonFiniteLossError(
                f"loss term '{name}' is {terms[name]} at step {step}: training stopped "
                "(try a lower optim.lr, train.precision=fp32, or a smaller optim.clip_grad)"
            )


def view_spec(cfg: dict) -> ViewSpec:
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


def build_loss(cfg: dict) -> UDILoss:
    """UDI loss; for ``method: dino`` the same loss with the extra token and patch level off."""
    is_udi = cfg["method"] == "udi"
    return UDILoss(
        out_dim=cfg["head"]["out_dim"],
        n_local=cfg["views"]["n_local"],
        extra_token=is_udi and cfg["udi"]["extra_token"],
        patch_level=is_udi and cfg["udi"]["patch_level"],
        alpha=cfg["udi"]["alpha"],
        student_temp=cfg["loss"]["student_temp"],
        center_momentum=cfg["loss"]["center_momentum"],
        centering=cfg["loss"]["centering"],
        sinkhorn_iters=cfg["loss"]["sinkhorn_iters"],
    )


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63 - 1)


class Trainer:
    """Holds the state of one pretraining run; ``run()`` trains until the end or ``max_steps``."""

    def __init__(self, cfg: dict, out_dir: str | Path, info: DistInfo | None = None):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.info = info or init_distributed(cfg["train"]["device"])
        self.device = self.info.device
        train = cfg["train"]
        data = cfg["data"]
        self.dataset = build_dataset(
            name=data["name"],
            path=data["path"],
            split="train",
            canvas_size=data["canvas_size"],
            scenes_size=data["scenes_size"],
            scenes_num_images=data["scenes_num_images"],
            seed=train["seed"],
        )
        self.sampler = ResumableSampler(
            len(self.dataset), train["batch_size"], self.info.world_size, self.info.rank, train["seed"]
        )
        self.steps_per_epoch = self.sampler.batches_per_epoch
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"the data set has {len(self.dataset)} images, fewer than one global batch "
                f"(train.batch_size={train['batch_size']} x {self.info.world_size} processes)"
            )
        self.total_steps = train["epochs"] * self.steps_per_epoch
        is_bootleg = cfg["method"] == "bootleg"
        self.spec = None if is_bootleg else view_spec(cfg)
        self.photometric = None if is_bootleg else photometric_from_config(cfg["views"])

        torch.manual_seed(train["seed"])  # identical initial weights on every process
        self.student = build_network(cfg).to(self.device)
        # Bootleg: its own batch and loss (udi.train.bootleg_step); the teacher is the encoder alone.
        self.bootleg = BootlegStep(cfg, self.student.target_layers) if is_bootleg else None
        if self.bootleg is None:
            self.teacher = copy.deepcopy(self.student).eval()
            for param in self.teacher.parameters():
                param.requires_grad_(False)
            self.loss_fn = build_loss(cfg).to(self.device)
            self.terms = TERMS
            self.ema_pair = (self.teacher, self.student)
        else:
            self.teacher = self.student.make_teacher()
            self.loss_fn = self.bootleg.loss_fn.to(self.device)
            self.terms = self.bootleg.log_names
            self.ema_pair = (self.teacher.backbone, self.student.backbone)  # the teacher is the encoder alone
        self.optimizer = build_optimizer(self.student)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=train["precision"] == "fp16")
        self.global_batch = train["batch_size"] * self.info.world_size
        self.base_lr = schedules.scaled_lr(cfg["optim"]["lr"], self.global_batch)

        self.step = 0  # optimiser steps done
        self.failed_images = 0
        self.seen_images = 0
        self._resume()

        self.model = self.student
        if self.info.distributed:
            unused = self.bootleg is None and self.student.srs is not None and not self.loss_fn.patch_level
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.student, device_ids=device_ids, find_unused_parameters=unused)
        if train["compile"]:
            for network in (self.student, self.teacher):
                network.backbone.forward_blocks = torch.compile(network.backbone.forward_blocks)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "failed_images": self.failed_images,
            "seen_images": self.seen_images,
            "config": self.cfg,
        }

    def _resume(self) -> None:
        path = self.out_dir / CHECKPOINT
        if not path.exists():
            return
        state = load_checkpoint(path, map_location=self.device)
        for key in ("method", "model", "head", "udi") + (("bootleg",) if self.bootleg else ()):
            if state["config"].get(key) != self.cfg[key]:
                raise ConfigError(
                    f"{path} was trained with a different '{key}' config ({state['config'].get(key)}); "
                    f"resume with the same settings or use another --out directory"
                )
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.failed_images = state["failed_images"]
        self.seen_images = state["seen_images"]

    def save(self) -> None:
        """Rank 0 writes the checkpoint and the teacher backbone, both atomically."""
        if self.info.is_main:
            save_checkpoint(self.out_dir / CHECKPOINT, self.state_dict())
            export_backbone(
                self.out_dir / BACKBONE, self.teacher.backbone, {"method": self.cfg["method"], "step": self.step}
            )
        barrier()

    # ------------------------------------------------------------------ step
    def _schedules(self, epoch: int) -> dict[str, float]:
        optim, loss = self.cfg["optim"], self.cfg["loss"]
        warmup = optim["warmup_epochs"] * self.steps_per_epoch
        values = {
            "lr": schedules.cosine_schedule(self.step, self.total_steps, self.base_lr, optim["min_lr"], warmup),
            "wd": schedules.cosine_schedule(self.step, self.total_steps, optim["weight_decay"], optim["weight_decay_end"]),
            "momentum": schedules.cosine_schedule(self.step, self.total_steps, optim["momentum_teacher"], 1.0),
        }
        if self.bootleg is None:  # Bootleg has no temperature
            values["teacher_temp"] = schedules.teacher_temperature(
                epoch, loss["warmup_teacher_temp"], loss["teacher_temp"], loss["warmup_teacher_temp_epochs"]
            )
        return values

    def train_step(self, batch: dict, epoch: int) -> dict[str, float]:
        seed = step_seed(self.cfg["train"]["seed"], self.step, self.info.rank)
        torch.manual_seed(seed)  # drop path and anything else drawing from the global RNG
        generator = torch.Generator().manual_seed(seed)
        sched = self._schedules(epoch)
        set_lr_wd(self.optimizer, sched["lr"], sched["wd"])
        if self.bootleg is None:
            terms = self._udi_terms(batch, generator, sched)
        else:
            inputs = self.bootleg.make_batch(batch, self.device, generator)
            with autocast_context(self.device, self.cfg["train"]["precision"]):
                terms = self.bootleg.losses(self.model, self.teacher, inputs)

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        if self.cfg["optim"]["clip_grad"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg["optim"]["clip_grad"])
        if epoch < self.cfg["optim"]["freeze_last_layer"]:
            cancel_last_layer_grads(self.student)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ema_update(*self.ema_pair, sched["momentum"])

        # One small all-reduce: loss terms (mean over processes) and the data-failure count.
        names = [n for n in self.terms if n in terms]
        stats = torch.stack([terms[n].detach().float() for n in names] + [batch["failed"].sum().float().to(self.device)])
        stats = all_reduce_mean(stats)
        self.step += 1
        values = dict(zip(names, stats[:-1].tolist()))
        check_finite(values, self.step)
        self.failed_images += round(stats[-1].item() * self.info.world_size)
        self.seen_images += self.global_batch
        end_of_epoch = self.step % self.steps_per_epoch == 0
        self._check_failures(min_images=0 if end_of_epoch else 100)
        return {**values, **sched}

    def _udi_terms(self, batch: dict, generator: torch.Generator, sched: dict) -> dict[str, torch.Tensor]:
        """UDI / DINO: views, teacher and student forward passes, loss terms (``TERMS``)."""
        canvas = batch["image"].to(self.device, non_blocking=True)
        aspect = batch["aspect"].to(self.device, non_blocking=True)
        views = make_udi_views(canvas, aspect, self.spec, generator, self.photometric)
        with autocast_context(self.device, self.cfg["train"]["precision"]):
            with torch.no_grad():
                patches = self.loss_fn.needs_teacher_patches
                teacher_out = self.teacher.forward_teacher(
                    views.globals_,
                    views.map_global if patches else None,
                    views.map_local if patches and self.spec.n_local else None,
                )
            select = None
            if self.loss_fn.patch_level:
                select = one_hot_selection(views.select_global, self.spec.global_grid).to(views.globals_.dtype)
            locals_ = views.locals_ if self.spec.n_local else None
            student_out = self.model("student", views.globals_, locals_, select)
            terms = self.loss_fn(
                student_out,
                teacher_out,
                views.valid_global if patches else None,
                views.valid_local if patches and self.spec.n_local else None,
                sched["teacher_temp"],
            )
        return terms

    def _check_failures(self, min_images: int) -> None:
        """Stop when more than ``data.max_fail_fraction`` of the images met could not be decoded
        (judged after ``min_images``, and at every epoch end whatever the count)."""
        total = self.seen_images + self.failed_images
        limit = self.cfg["data"]["max_fail_fraction"]
        if total >= min_images and self.failed_images > limit * total:
            raise RuntimeError(
                f"{self.failed_images} of {total} images could not be decoded (more than {limit:.0%}): "
                f"check the data folder {self.cfg['data']['path']} (the warnings above name the files)"
            )

    # ------------------------------------------------------------------- run
    def run(self) -> dict:
        cfg = self.cfg["train"]
        max_steps = min(self.total_steps, cfg["max_steps"] or self.total_steps)
        if self.info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            dump_config(self.cfg, self.out_dir / "config.yaml")
            self._truncate_log()
        loader = DataLoader(
            self.dataset,
            batch_size=cfg["batch_size"],
            sampler=self.sampler,
            num_workers=self.cfg["data"]["num_workers"],
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
        )
        progress = TrainProgress(max_steps, self.steps_per_epoch, enabled=cfg["progress"] and self.info.is_main)
        last: dict[str, float] = {}
        tick, images = time.perf_counter(), 0
        with progress:
            progress.update(self.step, {})
            while self.step < max_steps:
                epoch, start_batch = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch, start_batch)
                for batch in loader:
                    last = self.train_step(batch, epoch)
                    images += self.global_batch
                    done = self.step >= max_steps
                    if self.step % cfg["log_every"] == 0 or done:
                        elapsed = time.perf_counter() - tick
                        last["images_per_sec"] = images / max(elapsed, 1e-9)
                        self._log(epoch, last)
                        tick, images = time.perf_counter(), 0
                    progress.update(self.step, last, epoch)
                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    if self.step % cfg["checkpoint_every"] == 0 or end_of_epoch or done:
                        self.save()
                    if done:
                        break
        return {"step": self.step, **{k: v for k, v in last.items() if k in self.terms}}

    def _log(self, epoch: int, values: dict) -> None:
        if not self.info.is_main:
            return
        record = {"step": self.step, "epoch": epoch, **values, "failed_images": self.failed_images}
        with open(self.out_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _truncate_log(self) -> None:
        """On resume, drop log lines written after the checkpoint (those steps are redone)."""
        path = self.out_dir / "log.jsonl"
        if not path.exists():
            return
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError):
                warnings.warn(f"{path}: dropping a damaged log line")
        path.write_text("".join(line + "\n" for line in kept))


def pretrain(cfg: dict, out_dir: str | Path) -> dict:
    """Pretrain with a resolved config into ``out_dir`` (resuming if it has a checkpoint)."""
    return Trainer(cfg, out_dir).run()
