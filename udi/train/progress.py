"""Progress bar of a training run (rich): epoch, step, loss, speed."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    """``with TrainProgress(total, steps_per_epoch) as bar: bar.update(step, values, epoch)``; a no-op when disabled."""

    def __init__(self, total_steps: int, steps_per_epoch: int, enabled: bool = True):
        self.enabled = enabled
        self.steps_per_epoch = steps_per_epoch
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self._task = self._progress.add_task("pretrain", total=total_steps, epoch=0, loss="-", speed="-")

    def __enter__(self) -> "TrainProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def update(self, step: int, values: dict, epoch: int | None = None) -> None:
        fields = {"epoch": step // self.steps_per_epoch if epoch is None else epoch}
        if "loss" in values:
            fields["loss"] = f"{values['loss']:.4f}"
        if "images_per_sec" in values:
            fields["speed"] = f"{values['images_per_sec']:.0f}"
        self._progress.update(self._task, completed=step, **fields)
