"""Logs people read (udi.train.runlog): RUN_DIR/train.log, its echo on stdout, TensorBoard in RUN_DIR/tb."""

import io
import json
import re
import sys

import pytest

from udi.config import ConfigError
from udi.train.loop import Trainer, pretrain
from udi.train.runlog import RunLog, check_tensorboard, format_duration, format_step_line

STEP_LINE = re.compile(r"^step (\d+)/(\d+) \| epoch (\d+)/(\d+) \| loss [\d.]+ cls [\d.]+ cls_plus [\d.]+ patch [\d.]+ "
                       r"\| lr [\d.e+-]+ \| [\d.]+ img/s \| ETA \S+")


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def step_lines(text):
    return [line for line in text.splitlines() if line.startswith("step ")]


def scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tb"))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_train_log_has_the_summary_and_a_line_every_log_every_steps_also_on_stdout(tmp_path, tiny_cfg, capsys):
    pretrain(tiny_cfg("train.max_steps=5", "train.log_every=2", "train.tensorboard=false"), tmp_path)
    text = (tmp_path / "train.log").read_text()
    for expected in ("udi 0.1.0: udi pretraining", "device cpu, 1 process", "built-in data set 'scenes', 96 images",
                     "crops canvas", "model vit_nano/4: backbone", "batch 8 per process, 8 global; 12 steps per epoch, "
                     "36 steps in 3 epochs; this run stops at step 5", f"run dir {tmp_path}", "starting at step 0 of 5",
                     "done: step 5 of 5"):
        assert expected in text
    lines = step_lines(text)
    assert [int(STEP_LINE.match(line).group(1)) for line in lines] == [2, 4, 5]  # log_every and the last step
    assert all(STEP_LINE.match(line).group(2, 3, 4) == ("5", "1", "3") for line in lines)
    losses = [r["loss"] for r in read_log(tmp_path)]
    assert [float(line.split("loss ")[1].split()[0]) for line in lines] == pytest.approx(losses, abs=1e-4)
    out = capsys.readouterr().out  # pytest's stdout is not a terminal: everything is echoed there
    assert step_lines(out) == lines and "starting at step 0 of 5" in out


def test_resume_appends_resuming_from_step_and_tensorboard_keeps_one_event_per_step(tmp_path, tiny_cfg):
    from torch.utils.tensorboard import SummaryWriter

    pretrain(tiny_cfg("train.max_steps=4", "train.eval_every=3", "train.eval_images=16"), tmp_path)
    first = (tmp_path / "train.log").read_text()
    with SummaryWriter(str(tmp_path / "tb")) as writer:  # steps after the checkpoint, as a killed attempt leaves them
        for step in (5, 6):
            writer.add_scalar("loss", 999.0, step)
    pretrain(tiny_cfg("train.max_steps=6", "train.eval_every=3", "train.eval_images=16"), tmp_path)
    text = (tmp_path / "train.log").read_text()
    assert text.startswith(first)  # appended: the history stays
    assert "starting at step 0 of 4" in text and "resuming from step 4 of 6" in text.split(first, 1)[1]
    assert [int(line.split()[1].split("/")[0]) for line in step_lines(text)] == [1, 2, 3, 4, 5, 6]

    log, tb = read_log(tmp_path), scalars(tmp_path)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "cls", "cls_plus", "patch", "lr", "wd", "momentum", "teacher_temp", "images_per_sec",
                "epoch", "failed_images"):
        assert [s for s, _ in tb[key]] == [1, 2, 3, 4, 5, 6], key  # the killed attempt's 5 and 6 are gone
        assert [v for _, v in tb[key]] == pytest.approx([r[key] for r in log], rel=1e-6), key
    for key in ("knn_cls", "knn_cls_plus", "knn_patch_mean"):  # online k-NN at its steps (every 3, the last)
        assert [s for s, _ in tb[key]] == [3, 4, 6]
        assert [v for _, v in tb[key]] == pytest.approx([r[key] for r in log if key in r], rel=1e-6)


def test_tensorboard_false_writes_no_event_files(tmp_path, tiny_cfg):
    pretrain(tiny_cfg("train.max_steps=2", "train.tensorboard=false"), tmp_path)
    assert not (tmp_path / "tb").exists() and (tmp_path / "train.log").exists()


def test_a_terminal_with_the_progress_bar_gets_the_summary_but_not_the_step_lines(tmp_path, tiny_cfg, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    pretrain(tiny_cfg("train.max_steps=2", "train.progress=true", "train.tensorboard=false"), tmp_path)
    monkeypatch.undo()
    assert "starting at step 0 of 2" in terminal.getvalue() and not step_lines(terminal.getvalue())
    assert len(step_lines((tmp_path / "train.log").read_text())) == 2


@pytest.mark.parametrize("tty, bar, echoed", [(True, True, False), (True, False, True), (False, True, True)])
def test_step_lines_are_echoed_unless_a_progress_bar_has_the_terminal(tmp_path, tty, bar, echoed):
    stream = Terminal() if tty else io.StringIO()
    with RunLog(tmp_path, stream=stream, progress_bar=bar, summary=["hello"]) as log:
        log.step_line(1, 10, 0, 2, {"loss": 1.5, "lr": 1e-3, "images_per_sec": 250.0}, ["loss"])
    assert stream.getvalue().startswith("hello\n")
    assert bool(step_lines(stream.getvalue())) == echoed
    assert step_lines((tmp_path / "train.log").read_text())[0].startswith("step 1/10 | epoch 1/2 | loss 1.5000 | lr 1.00e-03 | 250 img/s | ETA")


def test_not_the_main_process_writes_nothing(tmp_path):
    stream = io.StringIO()
    with RunLog(tmp_path / "run", enabled=False, tensorboard=True, stream=stream, summary=["hello"]) as log:
        log.step_line(1, 10, 0, 2, {"loss": 1.5}, ["loss"])
        log.scalars({"step": 1, "loss": 1.5})
    assert stream.getvalue() == "" and not (tmp_path / "run").exists()


def test_formats():
    assert [format_duration(s) for s in (0, 42.4, 372, 7500, 3 * 86400 + 4 * 3600)] == ["0s", "42s", "6m12s", "2h05m", "3d04h"]
    line = format_step_line(120, 1248, 0, 8, {"loss": 4.12341, "cls": 4.01, "lr": 1.2e-3, "images_per_sec": 231.4,
                                              "knn_cls": 45.25, "failed_images": 2}, ["loss", "cls"], 372)
    assert line == ("step 120/1248 | epoch 1/8 | loss 4.1234 cls 4.0100 | lr 1.20e-03 | 231 img/s | knn_cls 45.25 | "
                    "2 undecodable images | ETA 6m12s")


def test_a_missing_tensorboard_package_names_the_key(tmp_path, tiny_cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without the package
    with pytest.raises(ConfigError, match="train.tensorboard=true needs the 'tensorboard' package"):
        check_tensorboard()
    trainer = Trainer(tiny_cfg("train.max_steps=1"), tmp_path)  # building one needs no TensorBoard (benchmarks)
    with pytest.raises(ConfigError, match="train.tensorboard"):
        trainer.run()
    Trainer(tiny_cfg("train.max_steps=1", "train.tensorboard=false"), tmp_path).run()  # without it: fine
    assert not (tmp_path / "tb").exists()
