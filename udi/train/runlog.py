"""Logs people read: ``RUN_DIR/train.log`` (a start-up summary, then one text line every
``train.log_every`` steps), echoed on stdout when it is not a terminal (nohup, SLURM, ``| tee``;
a terminal has the progress bar), and TensorBoard event files in ``RUN_DIR/tb/``
(``train.tensorboard``) with every scalar of ``log.jsonl``. The main process writes them."""

from __future__ import annotations

import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TextIO

from udi.config import ConfigError, crop_mode

TEXT_LOG = "train.log"
TB_DIR = "tb"


def check_tensorboard() -> None:
    """``train.tensorboard: true`` needs the ``tensorboard`` package: a clear error without it."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (imports tensorboard)
    except ImportError as error:
        raise ConfigError(
            "train.tensorboard=true needs the 'tensorboard' package (pip install tensorboard), "
            f"or set train.tensorboard=false ({error})"
        ) from None


def startup_summary(trainer, max_steps: int) -> list[str]:
    """The start-up summary of a ``udi.train.loop.Trainer`` about to train to ``max_steps``."""
    cfg, train, data, model = trainer.cfg, trainer.cfg["train"], trainer.cfg["data"], trainer.cfg["model"]
    if data.get("shards") is not None:
        source = f"shards {data['shards']} ({len(getattr(trainer.dataset, 'shards', []))} files)"
    elif data["name"] is not None:
        source = f"built-in data set '{data['name']}'"
    else:
        source = f"folder {data['path']}"
    millions = lambda module: sum(p.numel() for p in module.parameters()) / 1e6
    world = trainer.info.world_size
    until = f"; this run stops at step {max_steps} (train.max_steps)" if max_steps < trainer.total_steps else ""
    return [
        f"udi {sys.modules['udi'].__version__}: {cfg['method']} pretraining",  # the package, loaded already
        f"device {trainer.device}, {world} process{'es' if world > 1 else ''}, precision {train['precision']}"
        f"{', compiled' if train['compile'] else ''}",
        f"data: {source}, {len(trainer.dataset)} images, crops {crop_mode(cfg)}",
        f"model {model['arch']}/{model['patch_size']}: backbone {millions(trainer.student.backbone):.2f} M "
        f"parameters, student {millions(trainer.student):.2f} M",
        f"batch {train['batch_size']} per process, {trainer.global_batch} global; {trainer.steps_per_epoch} steps "
        f"per epoch, {trainer.total_steps} steps in {train['epochs']} epochs{until}",
        f"run dir {trainer.out_dir} (train.log, log.jsonl every {train['log_every']} steps"
        f"{', TensorBoard in tb/' if train['tensorboard'] else ''})",
        f"resuming from step {trainer.step} of {max_steps}" if trainer.step else f"starting at step 0 of {max_steps}",
    ]


def format_duration(seconds: float) -> str:
    """``42s``, ``6m12s``, ``2h05m``, ``3d04h``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_step_line(step: int, total: int, epoch: int, epochs: int, values: dict, terms: list[str],
                     eta_s: float | None = None) -> str:
    """``step 120/1248 | epoch 1/8 | loss 4.1234 cls 4.0100 ... | lr 1.20e-03 | 231 img/s | ETA 6m12s``
    (``epoch`` 0-based as in log.jsonl, shown 1-based; k-NN scores and failed images when there)."""
    parts = [f"step {step}/{total}", f"epoch {epoch + 1}/{epochs}"]
    losses = " ".join(f"{name} {values[name]:.4f}" for name in terms if name in values)
    if losses:
        parts.append(losses)
    if "lr" in values:
        parts.append(f"lr {values['lr']:.2e}")
    if "images_per_sec" in values:
        speed = values["images_per_sec"]
        parts.append(f"{speed:.0f} img/s" if speed >= 100 else f"{speed:.1f} img/s")
    knn = " ".join(f"{key} {value:.2f}" for key, value in values.items() if key.startswith("knn_"))
    if knn:
        parts.append(knn)
    if values.get("failed_images"):
        parts.append(f"{values['failed_images']} undecodable images")
    if eta_s is not None:
        parts.append(f"ETA {format_duration(eta_s)}")
    return " | ".join(parts)


class RunLog:
    """``with RunLog(out_dir, ...) as log: log.summary(lines); log.step_line(...); log.scalars(record)``.

    ``enabled``: the main process (elsewhere every call is a no-op). ``echo_steps``: the step
    lines also go to ``stream`` (default: when it is not a terminal or there is no progress bar);
    the summary always does. ``tensorboard``: event files in ``out_dir/tb``, events after
    ``resume_step`` from an earlier attempt hidden (``purge_step``: they are redone). ``summary``:
    lines written on entering (before a progress bar takes the terminal)."""

    def __init__(self, out_dir: str | Path, *, enabled: bool = True, tensorboard: bool = False,
                 resume_step: int = 0, stream: TextIO | None = None, progress_bar: bool = False,
                 echo_steps: bool | None = None, summary: list[str] | None = None):
        if tensorboard:  # on every process: one without the package must not leave the others waiting
            check_tensorboard()
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.stream = sys.stdout if stream is None else stream
        if echo_steps is None:
            echo_steps = not progress_bar or not _is_terminal(self.stream)
        self.echo_steps = echo_steps
        self.resume_step = resume_step
        self._tensorboard = tensorboard
        self._summary = list(summary or [])
        self._file: TextIO | None = None
        self._writer = None
        self._start = time.perf_counter()

    # ---------------------------------------------------------------- context
    def __enter__(self) -> "RunLog":
        if not self.enabled:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.out_dir / TEXT_LOG, "a", buffering=1)  # appended: a resumed run keeps the history
        if self._tensorboard:
            check_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides this directory's events at steps >= it (an earlier
            # attempt's steps after the checkpoint, which this run redoes).
            self._writer = SummaryWriter(str(self.out_dir / TB_DIR), purge_step=self.resume_step + 1)
        self._start = time.perf_counter()
        if self._summary:
            self.summary(self._summary)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled:
            return
        try:
            if exc_type is not None:
                self._write(f"stopped: {exc_type.__name__}: {exc}", echo=False)  # the caller prints the error
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if self._file is not None:
                self._file.close()
                self._file = None

    # ----------------------------------------------------------------- writes
    def _write(self, line: str, echo: bool) -> None:
        if self._file is not None:
            self._file.write(line + "\n")
        if echo:
            print(line, file=self.stream, flush=True)

    def summary(self, lines: list[str]) -> None:
        """The start-up summary: in train.log (after a timestamped header) and on the stream."""
        if not self.enabled:
            return
        self._write(f"=== {datetime.now().isoformat(sep=' ', timespec='seconds')}", echo=False)
        for line in lines:
            self._write(line, echo=True)

    def note(self, line: str) -> None:
        """A line in train.log and on the stream (e.g. the end of the run)."""
        if self.enabled:
            self._write(line, echo=True)

    def eta(self, step: int, total: int) -> float | None:
        """Seconds to ``total`` at this run's mean speed so far (None before its first step)."""
        done = step - self.resume_step
        if done <= 0:
            return None
        return (time.perf_counter() - self._start) / done * (total - step)

    def step_line(self, step: int, total: int, epoch: int, epochs: int, values: dict, terms: list[str]) -> None:
        if not self.enabled:
            return
        line = format_step_line(step, total, epoch, epochs, values, terms, self.eta(step, total))
        self._write(line, echo=self.echo_steps)

    def scalars(self, record: dict) -> None:
        """Every numeric entry of a log.jsonl record (but ``step``) at its step, in TensorBoard."""
        if self._writer is None:
            return
        step = record["step"]
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self._start


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False
