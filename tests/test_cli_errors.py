"""User mistakes end in one ``error:`` line (or the interrupted line) and a non-zero exit, no
traceback; ``--debug`` shows the traceback; unknown names suggest the closest valid one."""

import subprocess
import sys

import pytest
import torch

from udi.cli import main

from .train.conftest import TINY

DIGITS = [o for o in TINY if not o.startswith("data.")] + ["data.name=digits", "data.num_workers=0"]


def one_error_line(capsys) -> str:
    """The captured stderr as one line (rich wraps long ones); it must be a single ``error:`` message."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    text = " ".join(err.split())
    assert text.startswith("error: ") and text.count("error:") == 1, err
    return text


@pytest.fixture
def notes(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not weights, not a folder\n")
    return path


@pytest.mark.parametrize("argv, message", [
    (["eval", "knn", "--weights", "{tmp}/missing", "--data", "digits"], "weights not found: {tmp}/missing"),
    (["pretrain", "--config", "{tmp}/missing.yaml", "--out", "{tmp}/run"], "config not found: {tmp}/missing.yaml"),
    (["pretrain", "--config", "{tmp}", "--out", "{tmp}/run"], "is a folder; expected a YAML file"),
    (["pretrain", "--out", "{tmp}/run", *TINY, "data.name=null", "data.path={tmp}/notes.txt"],
     "{tmp}/notes.txt is not a folder (expected a folder of images)"),
    (["pretrain", "--out", "{tmp}/notes.txt", *DIGITS], "--out {tmp}/notes.txt is a file; expected a run directory"),
    (["viz", "curves", "{tmp}/notes.txt"], "{tmp}/notes.txt is a file; expected a run directory"),
    (["report", "{tmp}/notes.txt"], "{tmp}/notes.txt is a file; expected a run directory"),
    (["eval", "knn", "--weights", "{tmp}/notes.txt", "--data", "digits"], "not a PyTorch weights file"),
    (["eval", "knn", "--weights", "{tmp}", "--data", "digits"], "is a directory without backbone.safetensors"),
])
def test_a_mistake_is_one_error_line(tmp_path, notes, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    assert message.replace("{tmp}", str(tmp_path)) in one_error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_one_error_line(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "run"), *DIGITS, "train.device=cuda"]) == 2
    assert "device cuda was asked for" in one_error_line(capsys) and not (tmp_path / "run").exists()
    assert main(["eval", "knn", "--weights", str(tmp_path), "--data", "digits", "--device", "cuda"]) == 2
    one_error_line(capsys)


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--out", "{tmp}/run", *DIGITS, "train.bach_size=4"],
     "unknown config key 'train.bach_size' (did you mean 'train.batch_size'?)"),
    (["pretrain", "--out", "{tmp}/run", *DIGITS, "trian.batch_size=4"],
     "unknown config key 'trian.batch_size' (did you mean 'train.batch_size'?)"),
    (["pretrain", "--out", "{tmp}/run", *DIGITS, "method=dinoo"], "got 'dinoo' (did you mean 'dino'?)"),
    (["pretrain", "--config", "udi_cpu_dem", "--out", "{tmp}/run"], "(did you mean 'udi_cpu_demo'?)"),
    (["pretrain", "--out", "{tmp}/run", *TINY, "data.name=scenez"], "unknown data set 'scenez'"),
    (["pretrain", "--out", "{tmp}/run", *TINY, "data.name=scenez"], "(did you mean 'scenes'?)"),
    (["embed", "--weights", "{tmp}", "--data", "digts", "--out", "{tmp}/x.npy"], "(did you mean 'digits'?)"),
])
def test_unknown_names_suggest_the_closest(tmp_path, capsys, argv, message):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert message in one_error_line(capsys)


def test_eval_data_suggests_the_closest(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--out", str(run), *DIGITS, "train.max_steps=1"]) == 0
    capsys.readouterr()
    assert main(["eval", "knn", "--weights", str(run), "--data", "digts"]) == 2
    assert "(did you mean 'digits'?)" in one_error_line(capsys)


def test_no_suggestion_for_a_far_name(capsys, tmp_path):
    assert main(["pretrain", "--out", str(tmp_path / "run"), *DIGITS, "zzz=1"]) == 2
    assert "did you mean" not in one_error_line(capsys)


def test_ctrl_c_outside_the_loop_says_where_to_resume(tmp_path, capsys, monkeypatch):
    """A Ctrl-C the training loop does not turn into a checkpoint (start-up, a second Ctrl-C)."""
    import udi.train.loop

    run = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(udi.train.loop, "pretrain", interrupted)
    assert main(["pretrain", "--out", str(run), *DIGITS]) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert err == "interrupted before the first checkpoint; rerun the same command to start again"
    monkeypatch.undo()
    assert main(["pretrain", "--out", str(run), *DIGITS, "train.max_steps=2"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(udi.train.loop, "pretrain", interrupted)
    assert main(["pretrain", "--out", str(run), *DIGITS, "train.max_steps=4"]) == 130
    err = "".join(capsys.readouterr().err.split())  # rich may wrap inside the path
    assert err == "".join(f"interrupted; the last checkpoint is step 2 ({run / 'checkpoint.pt'}); "
                          "rerun the same command to resume".split())


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["pretrain", "--out", str(tmp_path / "run"), *DIGITS, "train.bach_size=4"]
    from udi.config import ConfigError

    with pytest.raises(ConfigError, match="train.bach_size"):
        main([*argv, "--debug"])
    with pytest.raises(ConfigError):
        main(["--debug", *argv])
    proc = subprocess.run([sys.executable, "-m", "udi", "--debug", "pretrain", "--config", str(tmp_path / "x.yaml"),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "config not found" in proc.stderr


def test_an_unexpected_error_is_one_line_naming_debug(tmp_path, capsys, monkeypatch):
    import udi.train.loop

    def broken(*args, **kwargs):
        raise TypeError("an internal mistake")

    monkeypatch.setattr(udi.train.loop, "pretrain", broken)
    assert main(["pretrain", "--out", str(tmp_path / "run"), *DIGITS]) == 1
    assert "TypeError: an internal mistake (unexpected: rerun with --debug for the traceback)" in one_error_line(capsys)
    with pytest.raises(TypeError):
        main(["pretrain", "--out", str(tmp_path / "run"), *DIGITS, "--debug"])
