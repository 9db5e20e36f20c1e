"""The pretraining loop: the same code on CPU, one GPU and torchrun DDP, for every method.

What a method does (its networks, inputs, loss terms, EMA modules, extra schedules, log
terms) comes from its ``Method`` object (the ``methods`` package); this loop names none.

Randomness is a function of (seed, step, rank): every step reseeds the global RNG (drop
path) and builds a fresh generator for the views, and the sampler is seeded per epoch.
With the full training state in ``checkpoint.pt``, a resumed run repeats an uninterrupted
one exactly (on the CPU), mid-epoch included.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from udi import schedules
from udi.config import ConfigError, describe_changes, dump_config, resume_changes, show_value
from udi.data.datasets import build_dataset
from udi.data.shards import ShardDataset
from udi.io.checkpoint import (atomic_write, copy_checkpoint, export_backbone, load_checkpoint,
                               remove_stale_temporaries, save_checkpoint)
from udi.methods import build_method
from udi.train.cpu_memory import retain_freed_memory
from udi.train.distributed import DistInfo, DistributedTimeout, all_gather_lists, all_reduce_mean, barrier, init_distributed
from udi.train.monitor import KnnMonitor
from udi.train.optim import build_optimizer, cancel_last_layer_grads, ema_update, set_lr_wd
from udi.train.progress import TrainProgress
from udi.train.lock import LOCK, RunLock, check_free
from udi.train.runlog import TEXT_LOG, RunLog, format_duration, startup_summary
from udi.train.sampler import ResumableSampler
from udi.train.stop import StopSignals, TrainingStopped, leave_stop_signals_to_the_main_process

CHECKPOINT = "checkpoint.pt"
BACKBONE = "backbone.safetensors"
LOG = "log.jsonl"
EPOCH_CHECKPOINT = "checkpoint_epoch{:04d}.pt"  # train.keep_checkpoints: the copy after that many epochs
RESTART_BACKUP = "before-restart-"  # + a timestamp: the folder where --restart sets the old files aside


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


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_precision_warning(device: torch.device, precision: str) -> str | None:
    """Why ``train.precision`` would be slow here, or None: autocast to bf16 / fp16 on a CPU without
    native matrix units for it (oneDNN's check: AVX512-BF16 / AMX or AVX512-FP16) emulates the
    matrix products (measured on an AVX2 CPU: a ViT-S/16 training step 17x slower than in fp32)."""
    if device.type != "cpu" or precision == "fp32":
        return None
    check = "_is_mkldnn_bf16_supported" if precision == "bf16" else "_is_mkldnn_fp16_supported"
    try:  # looking the op up fails too where torch was built without oneDNN
        if getattr(torch.ops.mkldnn, check)():
            return None
    except (AttributeError, RuntimeError):  # a torch built without oneDNN: no native kernels either
        pass
    return (f"train.precision={precision} on a CPU without native {precision} matrix units "
            f"(CPU capability {torch.backends.cpu.get_cpu_capability()}): the matrix products are emulated, "
            "many times slower than fp32 here; train.precision=fp32 is faster on this machine")


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63 - 1)


class Trainer:
    """Holds the state of one pretraining run; ``run()`` trains until the end or ``max_steps``."""

    def __init__(self, cfg: dict, out_dir: str | Path, info: DistInfo | None = None, *, restart: bool = False,
                 allow_changes: bool = False):
        """``restart``: ignore ``out_dir``'s checkpoint; ``run()`` sets the old files aside (``RESTART_BACKUP``)
        and trains from step 0. ``allow_changes``: resume even with trajectory-changing settings
        (all keys but ``RESUME_FREE_KEYS`` of the config module), recording them in train.log."""
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.info = info or init_distributed(cfg["train"]["device"], cfg["train"]["dist_timeout"])
        self.restart, self.allow_changes = restart, allow_changes
        self.resume_changes: list[tuple] = []  # (key, old, new) accepted with allow_changes
        if self.info.is_main:  # a directory another live process trains into: say so before reading its files
            check_free(self.out_dir)
        self.device = self.info.device
        if cfg["train"]["retain_cpu_memory"] and self.device.type == "cpu":
            retain_freed_memory()
        train = cfg["train"]
        data = cfg["data"]
        if data.get("shards") is not None:  # item i of shards made from a folder is the folder's item i
            self.dataset = ShardDataset(data["shards"], data["canvas_size"], data["max_image_pixels"])
        else:
            self.dataset = build_dataset(
                name=data["name"],
                path=data["path"],
                split="train",
                canvas_size=data["canvas_size"],
                max_image_pixels=data["max_image_pixels"],
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
        self.method = build_method(cfg)  # everything method-specific (udi.methods)
        self.loader_views = self.method.loader_views()  # data.crops: full
        if self.loader_views is not None:
            if not hasattr(self.dataset, "views"):
                raise ConfigError(f"data.crops=full needs image files; {type(self.dataset).__name__} has none")
            self.dataset.views = self.loader_views

        torch.manual_seed(train["seed"])  # identical initial weights on every process
        self.student = self.method.build_student().to(self.device)
        self.teacher = self.method.build_teacher(self.student)
        self.loss_fn = self.method.build_loss(self.student).to(self.device)
        self.terms = self.method.log_terms(self.loss_fn)
        self.ema_pair = self.method.ema_modules(self.teacher, self.student)
        self.optimizer = build_optimizer(self.student)
        slow_precision = cpu_precision_warning(self.device, train["precision"])
        if slow_precision and self.info.is_main:
            warnings.warn(slow_precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=train["precision"] == "fp16")
        self.global_batch = train["batch_size"] * self.info.world_size
        self.base_lr = schedules.scaled_lr(cfg["optim"]["lr"], self.global_batch)

        # Online k-NN of the teacher (train.eval_every), on the main process only.
        self.monitor = KnnMonitor(cfg, self.device) if train["eval_every"] and self.info.is_main else None

        self.step = 0  # optimiser steps done
        self.failed_files: set[int] = set()  # data set indices of the distinct undecodable files met
        self.seen_images = 0
        self._stop = StopSignals()  # replaced by the active one during run()
        self.stop_requested = False
        self._resume()

        self.model = self.student
        if self.info.distributed:
            unused = self.method.find_unused_parameters(self.student)
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
            "failed_files": sorted(self.failed_files),
            "seen_images": self.seen_images,
            "config": self.cfg,
        }

    def _resume(self) -> None:
        path = self.out_dir / CHECKPOINT
        if self.restart or not path.exists():
            return
        state = load_checkpoint(path, map_location=self.device)
        changes = resume_changes(state["config"], self.cfg)
        if changes and not self.allow_changes:
            raise ConfigError(
                f"{path} was trained with {describe_changes(changes)}: resuming with them would change the "
                f"training trajectory. Resume with the same settings, add --allow-changes to resume anyway (noted "
                f"in {TEXT_LOG}), or --restart to start afresh (the old files are kept in {RESTART_BACKUP}TIME/)"
            )
        self.resume_changes = changes
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.failed_files = set(state.get("failed_files", []))
        self.seen_images = state["seen_images"]

    def save(self) -> None:
        """Rank 0 writes the checkpoint and the teacher backbone, both atomically."""
        if self.info.is_main:
            save_checkpoint(self.out_dir / CHECKPOINT, self.state_dict())
            keep = self.cfg["train"]["keep_checkpoints"]
            epochs, within = divmod(self.step, self.steps_per_epoch)
            if keep and within == 0 and epochs % keep == 0:  # an epoch end: keep every keep-th one
                copy_checkpoint(self.out_dir / CHECKPOINT, self.out_dir / EPOCH_CHECKPOINT.format(epochs))
            metadata = {**self.method.backbone_metadata(), "step": self.step}
            export_backbone(self.out_dir / BACKBONE, self.teacher.backbone, metadata)
        barrier()

    # ------------------------------------------------------------------ step
    def _schedules(self, epoch: int) -> dict[str, float]:
        optim = self.cfg["optim"]
        warmup = optim["warmup_epochs"] * self.steps_per_epoch
        values = {
            "lr": schedules.cosine_schedule(self.step, self.total_steps, self.base_lr, optim["min_lr"], warmup),
            "wd": schedules.cosine_schedule(self.step, self.total_steps, optim["weight_decay"], optim["weight_decay_end"]),
            "momentum": schedules.cosine_schedule(self.step, self.total_steps, optim["momentum_teacher"],
                                                   optim["momentum_teacher_end"]),
        }
        values.update(self.method.schedules(epoch))  # e.g. the teacher temperature
        return values

    def train_step(self, batch: dict, epoch: int) -> dict[str, float]:
        seed = step_seed(self.cfg["train"]["seed"], self.step, self.info.rank)
        torch.manual_seed(seed)  # drop path and anything else drawing from the global RNG
        generator = torch.Generator().manual_seed(seed)
        sched = self._schedules(epoch)
        set_lr_wd(self.optimizer, sched["lr"], sched["wd"])
        inputs = self.method.make_inputs(batch, self.device, generator, sched)
        with autocast_context(self.device, self.cfg["train"]["precision"]):
            terms = self.method.loss_terms(self.model, self.teacher, self.loss_fn, inputs, sched)

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
        # The last entry says whether some process was asked to stop (SIGTERM/SIGINT): all stop together.
        stats = torch.stack([terms[n].detach().float() for n in names] + [batch["failed"].sum().float().to(self.device),
                            torch.tensor(float(self._stop.signum is not None), device=self.device)])
        *term_values, failed, stop = all_reduce_mean(stats).tolist()
        self.stop_requested = stop > 0
        self.step += 1
        values = dict(zip(names, term_values))
        check_finite(values, self.step)
        if failed > 0:  # some process met undecodable files: which ones (each counted once)
            self._record_failures(batch)
        self.seen_images += self.global_batch
        self._check_failures(end_of_epoch=self.step % self.steps_per_epoch == 0)
        return {**values, **sched}

    @property
    def failed_images(self) -> int:
        """Distinct undecodable files met so far (over all processes)."""
        return len(self.failed_files)

    def _record_failures(self, batch: dict) -> None:
        """An item whose ``failed`` > 0 stands in for the file it was asked for, (index - failed)
        mod n, which could not be decoded (the files skipped on the way are other items' own)."""
        failed = batch["failed"]
        requested = (batch["index"][failed > 0] - failed[failed > 0]) % len(self.dataset)
        self.failed_files.update(all_gather_lists(requested.tolist()))

    def _check_failures(self, end_of_epoch: bool) -> None:
        """Stop when more than ``data.max_fail_fraction`` of the files scanned could not be
        decoded: judged once enough files were scanned for the fraction to mean something (at
        least 10 / fraction of them, 1,000 for 1 %) or the whole data set was, and at each epoch end."""
        size = len(self.dataset)
        scanned = min(self.seen_images, size)  # each epoch asks for every file once
        limit = self.cfg["data"]["max_fail_fraction"]
        enough = scanned >= min(size, max(100, math.ceil(10 / limit) if limit > 0 else size))
        if (enough or end_of_epoch) and self.failed_images > limit * scanned:
            data = self.cfg["data"]
            source = f"shards {data['shards']}" if data.get("shards") is not None else f"folder {data['path']}"
            raise RuntimeError(
                f"{self.failed_images} of {scanned} images could not be decoded (more than {limit:.0%}): "
                f"check the data {source} (the warnings above name the files)"
            )

    # ------------------------------------------------------------------- run
    def run(self) -> dict:
        lock = RunLock(self.out_dir) if self.info.is_main else nullcontext()  # one process per run directory
        with lock, StopSignals() as self._stop:
            try:
                return self._run()
            except RuntimeError as error:  # gloo: "Timed out waiting ...", nccl: "Watchdog ... timeout"
                text = str(error)
                if self.info.world_size > 1 and ("Timed out" in text or "timeout" in text.lower()):
                    timeout = self.cfg["train"]["dist_timeout"]
                    raise DistributedTimeout(
                        f"process {self.info.rank} got no answer from the others for {timeout:g} s "
                        f"(train.dist_timeout): one of them hangs or died at step {self.step + 1}; the last "
                        f"checkpoint in {self.out_dir} is intact, resume with the same command") from error
                raise

    def _run(self) -> dict:
        cfg = self.cfg["train"]
        max_steps = min(self.total_steps, cfg["max_steps"] or self.total_steps)
        if self.restart and self.info.is_main:
            self._set_aside_old_files()
        if self.step >= max_steps:  # every process alike (same step): nothing is written
            return self._finished(max_steps)
        if self.step and self.resume_changes and self.info.is_main:  # "resuming from step N of M": the summary
            changed = "; ".join(f"{key} {show_value(old)} -> {show_value(new)}" for key, old, new in self.resume_changes)
            self._note(f"resuming from step {self.step} with changed settings (--allow-changes): {changed}")
        if self.info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for stale in remove_stale_temporaries(self.out_dir, (CHECKPOINT, BACKBONE, LOG, "config.yaml",
                                                                 EPOCH_CHECKPOINT.replace("{:04d}", "*"))):
                warnings.warn(f"removed {stale}, left by a process killed while writing it")
            atomic_write(self.out_dir / "config.yaml", lambda tmp: dump_config(self.cfg, tmp))
            self._truncate_log()
        loader = DataLoader(
            self.dataset,
            batch_size=cfg["batch_size"],
            sampler=self.sampler,
            num_workers=self.cfg["data"]["num_workers"],
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
            worker_init_fn=leave_stop_signals_to_the_main_process if self.cfg["data"]["num_workers"] else None,
        )
        # The bar in a terminal; elsewhere (nohup, SLURM, | tee) train.log's text lines on stdout.
        bar = cfg["progress"] and self.info.is_main and sys.stdout.isatty()
        progress = TrainProgress(max_steps, self.steps_per_epoch, enabled=bar)
        self._max_steps = max_steps
        self._runlog = RunLog(self.out_dir, enabled=self.info.is_main, tensorboard=cfg["tensorboard"],
                              resume_step=self.step, progress_bar=bar,
                              summary=startup_summary(self, max_steps) if self.info.is_main else [])
        last: dict[str, float] = {}
        tick, images = time.perf_counter(), 0
        with self._runlog, progress:
            progress.update(self.step, {})
            while self.step < max_steps:
                epoch, start_batch = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch, start_batch)
                if self.loader_views is not None:  # before the loader's workers copy the data set
                    self.loader_views.set_epoch(epoch)
                for batch in loader:
                    last = self.train_step(batch, epoch)
                    images += self.global_batch
                    done = self.step >= max_steps
                    evaluate = cfg["eval_every"] > 0 and (self.step % cfg["eval_every"] == 0 or done)
                    if self.step % cfg["log_every"] == 0 or done or evaluate:
                        elapsed = time.perf_counter() - tick
                        last["images_per_sec"] = images / max(elapsed, 1e-9)
                        if evaluate and self.monitor is not None:  # after the speed: not counted in it
                            last.update(self.monitor(self.teacher.backbone))
                        self._log(epoch, last)
                        tick, images = time.perf_counter(), 0
                    progress.update(self.step, last, epoch)
                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    if self.step % cfg["checkpoint_every"] == 0 or end_of_epoch or done or self.stop_requested:
                        self.save()
                    if self.stop_requested and not done:
                        signum = self._stop.signum
                        name = signal.Signals(signum).name if signum else "another process"
                        raise TrainingStopped(
                            f"interrupted by {name} at step {self.step} of {max_steps}; the last checkpoint is "
                            f"step {self.step} ({self.out_dir / CHECKPOINT}); rerun the same command to resume",
                            signum)
                    if done:
                        break
            self._runlog.note(f"done: step {self.step} of {max_steps} in {format_duration(self._runlog.elapsed())}")
        return {"step": self.step, **{k: v for k, v in last.items() if k in self.terms}}

    def _log(self, epoch: int, values: dict) -> None:
        if not self.info.is_main:
            return
        record = {"step": self.step, "epoch": epoch, **values, "failed_images": self.failed_images}
        with open(self.out_dir / LOG, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self._runlog.step_line(self.step, self._max_steps, epoch, self.cfg["train"]["epochs"], record, self.terms)
        self._runlog.scalars(record)  # TensorBoard: the same scalars at the same step

    def _truncate_log(self) -> None:
        """On resume, drop log lines written after the checkpoint (those steps are redone)."""
        path = self.out_dir / LOG
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
        if kept != lines:  # rewritten whole or not at all: a kill here must not lose the history
            atomic_write(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept)))

    def _note(self, line: str) -> None:
        """A line in RUN_DIR/train.log and on stdout (main process)."""
        if not self.info.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / TEXT_LOG, "a") as handle:
            handle.write(line + "\n")
        print(line, flush=True)

    def _finished(self, max_steps: int) -> dict:
        """A run at its end: say so, write nothing; the summary of its last logged step."""
        summary = {"step": self.step}
        if self.info.is_main:
            print(f"{self.out_dir}: the run is finished (its checkpoint is at step {self.step}, of {max_steps}); "
                  "nothing to do. Raise train.epochs or train.max_steps to train further, or --restart to start "
                  "afresh", flush=True)
            path = self.out_dir / LOG
            lines = path.read_text().splitlines() if path.exists() else []
            for line in reversed(lines):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("step") == self.step:
                    summary.update({k: v for k, v in record.items() if k in self.terms})
                break
        return summary

    def _set_aside_old_files(self) -> None:
        """--restart: move the files of the run directory (all but the lock and earlier such folders)
        into ``before-restart-YYYYmmdd-HHMMSS/``."""
        if not self.out_dir.is_dir():
            return
        old = [p for p in self.out_dir.iterdir() if p.name != LOCK and not p.name.startswith(RESTART_BACKUP)]
        if not old:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        backup, n = self.out_dir / f"{RESTART_BACKUP}{stamp}", 1
        while backup.exists():
            backup, n = self.out_dir / f"{RESTART_BACKUP}{stamp}-{n}", n + 1
        backup.mkdir()
        for path in old:
            path.rename(backup / path.name)
        self._note(f"restart: the previous files of {self.out_dir} were moved to {backup}; training from step 0")


def pretrain(cfg: dict, out_dir: str | Path, restart: bool = False, allow_changes: bool = False) -> dict:
    """Pretrain with a resolved config into ``out_dir`` (resuming if it has a checkpoint; ``restart``,
    ``allow_changes``: see ``Trainer``)."""
    return Trainer(cfg, out_dir, restart=restart, allow_changes=allow_changes).run()
