"""Short end-to-end pretraining runs: outputs, exact resume, kills, failure messages."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from udi.config import load_config
from udi.models.pretrained import load_backbone
from udi.io import checkpoint as checkpoint_module
from udi.train.loop import NonFiniteLossError, Trainer, pretrain

from .conftest import TINY


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def assert_same_state(run_a, run_b):
    a = torch.load(run_a / "checkpoint.pt", weights_only=True)
    b = torch.load(run_b / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"]
    for part in ("student", "teacher", "loss"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    backbone_a, backbone_b = load_file(run_a / "backbone.safetensors"), load_file(run_b / "backbone.safetensors")
    assert all(torch.equal(backbone_a[k], backbone_b[k]) for k in backbone_a)
    terms = ("loss", "cls", "cls_plus", "patch", "lr", "wd", "momentum", "teacher_temp")
    strip = lambda log: [{k: r[k] for k in terms if k in r} | {"step": r["step"]} for r in log]
    assert strip(read_log(run_a)) == strip(read_log(run_b))


@pytest.mark.parametrize("method", ["udi", "dino"])
def test_run_directory_contents(tmp_path, tiny_cfg, method):
    summary = pretrain(tiny_cfg(f"method={method}", "train.max_steps=3"), tmp_path)
    assert summary["step"] == 3
    assert {p.name for p in tmp_path.iterdir()} >= {"config.yaml", "log.jsonl", "checkpoint.pt", "backbone.safetensors"}
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == [1, 2, 3]
    expected = {"step", "epoch", "loss", "cls", "lr", "wd", "momentum", "teacher_temp", "images_per_sec"}
    if method == "udi":
        expected |= {"cls_plus", "patch"}
    assert expected <= set(log[0]) and ("patch" in log[0]) == (method == "udi")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    backbone = load_backbone(tmp_path / "backbone.safetensors")
    assert backbone.n_cls == (2 if method == "udi" else 1)
    assert backbone(torch.randn(1, 3, 16, 16)).shape == (1, backbone.n_cls, 96)


def test_resume_mid_epoch_is_exact(tmp_path, tiny_cfg):
    # 96 images / 8 per batch -> 12 steps per epoch; stop at 5 (mid-epoch) and at 14 (next epoch).
    full, parts = tmp_path / "full", tmp_path / "parts"
    pretrain(tiny_cfg("train.max_steps=16"), full)
    pretrain(tiny_cfg("train.max_steps=5"), parts)
    pretrain(tiny_cfg("train.max_steps=14"), parts)
    pretrain(tiny_cfg("train.max_steps=16"), parts)
    assert_same_state(full, parts)


def test_interrupted_checkpoint_write_keeps_previous_and_resumes_exactly(tmp_path, tiny_cfg, monkeypatch):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    pretrain(tiny_cfg("train.max_steps=10"), full)
    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (step 8): die half-way through the write
            real_save(obj, path)
            with open(path, "r+b") as handle:
                handle.truncate(os.path.getsize(path) // 2)
            raise KeyboardInterrupt("killed while writing")
        real_save(obj, path)

    monkeypatch.setattr(checkpoint_module.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_cfg("train.max_steps=10"), crashed)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert torch.load(crashed / "checkpoint.pt", weights_only=True)["step"] == 4  # the previous one survived
    assert not [p for p in crashed.iterdir() if p.name.endswith(".tmp")]
    pretrain(tiny_cfg("train.max_steps=10"), crashed)
    assert_same_state(full, crashed)


def wait_for_log_lines(run, n: int, timeout: float = 120) -> None:
    """Until ``run``'s log.jsonl has ``n`` lines (the run is under way)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = run / "log.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)


def _cli(out, *extra):
    return [sys.executable, "-m", "udi", "pretrain", "--out", str(out), *TINY, *extra]


def test_kill_minus_nine_then_resume_matches_uninterrupted(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = ("train.max_steps=14", "train.checkpoint_every=1")
    subprocess.run(_cli(full, *args), check=True, capture_output=True)
    process = subprocess.Popen(_cli(killed, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_log_lines(killed, 6)
    process.send_signal(signal.SIGKILL)  # no clean-up of any kind
    process.wait()
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["step"] < 14  # really interrupted
    subprocess.run(_cli(killed, *args), check=True, capture_output=True)
    assert_same_state(full, killed)


def test_non_finite_loss_names_step_and_term(tmp_path, tiny_cfg):
    trainer = Trainer(tiny_cfg("train.max_steps=2"), tmp_path)
    with torch.no_grad():
        trainer.student.head.mlp[0].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"loss term '(cls|cls_plus|patch)' is nan at step 1"):
        trainer.run()


def test_resume_with_other_architecture_is_refused(tmp_path, tiny_cfg):
    pretrain(tiny_cfg("train.max_steps=1"), tmp_path)
    with pytest.raises(ValueError, match="different 'model' config"):
        pretrain(tiny_cfg("train.max_steps=2", "model.depth=2"), tmp_path)


def test_too_small_data_set_is_a_clear_error(tmp_path, tiny_cfg):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        pretrain(tiny_cfg("data.scenes_num_images=4"), tmp_path)


def _folder(tmp_path, n_images, corrupt):
    from PIL import Image

    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n_images):
        path = folder / ("nested" if i % 2 else "") / f"img{i:03d}.png"
        if i in corrupt:
            path.write_bytes(b"not an image at all")
            continue
        array = (torch.rand(20 + i % 7, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(array).save(path)
    return folder


def test_plain_folder_pretrains_and_counts_undecodable_files(tmp_path, tiny_cfg):
    folder = _folder(tmp_path, 24, corrupt={5})
    cfg = tiny_cfg("data.name=null", f"data.path={folder}", "data.canvas_size=24", "data.max_fail_fraction=0.5",
                   "train.max_steps=6")
    with pytest.warns(UserWarning, match="img005.png"):
        pretrain(cfg, tmp_path / "run")
    assert read_log(tmp_path / "run")[-1]["failed_images"] >= 1


def test_more_than_one_percent_undecodable_stops_with_clear_error(tmp_path, tiny_cfg):
    folder = _folder(tmp_path, 24, corrupt={3})
    cfg = tiny_cfg("data.name=null", f"data.path={folder}", "data.canvas_size=24", "train.max_steps=40")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match=r"could not be decoded \(more than 1%\)"):
        pretrain(cfg, tmp_path / "run")


def test_missing_or_empty_folder_is_a_clear_error(tmp_path, tiny_cfg):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        pretrain(tiny_cfg("data.name=null", f"data.path={tmp_path / 'does_not_exist'}"), tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        pretrain(tiny_cfg("data.name=null", f"data.path={tmp_path / 'empty'}"), tmp_path / "run")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(tmp_path, tiny_cfg, precision):
    trainer = Trainer(tiny_cfg(f"train.precision={precision}", "train.max_steps=2"), tmp_path)
    summary = trainer.run()
    assert summary["step"] == 2 and all(math.isfinite(summary[k]) for k in ("loss", "cls", "cls_plus", "patch"))
    assert trainer.scaler.is_enabled() == (precision == "fp16")


def test_teacher_momentum_follows_a_cosine_to_its_end_value(tmp_path, tiny_cfg):
    # 12 steps (96 images / 8); the log holds the momentum used at steps 0..11 of 12.
    pretrain(tiny_cfg("train.epochs=1", "optim.momentum_teacher=0.9", "optim.momentum_teacher_end=0.95"), tmp_path)
    momenta = [r["momentum"] for r in read_log(tmp_path)]
    expected = [0.95 - 0.025 * (1 + math.cos(math.pi * s / 12)) for s in range(12)]
    assert momenta == pytest.approx(expected, abs=1e-9)


def test_a_full_disk_is_one_error_line_and_keeps_the_previous_checkpoint(tmp_path, tiny_overrides):
    """A real write failure (the kernel's file-size limit, as a full disk: the write fails mid-file)."""
    run = tmp_path / "run"
    pretrain(load_config(None, tiny_overrides + ["train.max_steps=4"]), run)
    size = (run / "checkpoint.pt").stat().st_size
    argv = ["pretrain", "--out", str(run), *tiny_overrides, "train.max_steps=8"]
    code = (f"import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size // 2}, {size // 2}))\n"
            f"from udi.cli import main\nsys.exit(main({argv!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    error = " ".join(proc.stderr.split()).split("error:", 1)[1]  # rich wraps long lines
    assert "could not write" in error and "checkpoint.pt" in error and "unchanged" in error
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4  # the previous one survives
    assert not list(run.glob(".*.tmp"))  # the half-written temp file is gone


def test_resume_removes_temporaries_left_by_a_kill(tmp_path, tiny_cfg):
    pretrain(tiny_cfg("train.max_steps=2"), tmp_path)
    stale = [tmp_path / ".checkpoint.pt.x1y2.tmp", tmp_path / ".backbone.safetensors.abc.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    keep = tmp_path / ".notes.tmp"
    keep.write_text("not ours")
    with pytest.warns(UserWarning, match="killed while writing"):
        pretrain(tiny_cfg("train.max_steps=3"), tmp_path)
    assert not any(p.exists() for p in stale) and keep.exists()


def test_a_failed_log_rewrite_keeps_the_whole_history(tmp_path, tiny_cfg, monkeypatch):
    from pathlib import Path

    pretrain(tiny_cfg("train.max_steps=4"), tmp_path)
    with open(tmp_path / "log.jsonl", "a") as handle:  # a line past the checkpoint, as after a kill
        handle.write(json.dumps({"step": 5, "loss": 1.0}) + "\n")
    before = (tmp_path / "log.jsonl").read_text()
    real = Path.write_text

    def dying_write(self, text, *args, **kwargs):
        if "log.jsonl" not in self.name:
            return real(self, text, *args, **kwargs)
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", dying_write)
    with pytest.raises(OSError, match="could not write .*log.jsonl"):
        pretrain(tiny_cfg("train.max_steps=6"), tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "log.jsonl").read_text() == before  # before: half of it, in place


def test_each_undecodable_file_counts_once(tmp_path, tiny_cfg):
    """Two adjacent broken files over 3 epochs are 2 failures (before: each skip counted every
    broken file it passed, every epoch: 9 here)."""
    folder = _folder(tmp_path, 24, corrupt={4, 6})  # img004 and img006 sit next to each other in path order
    cfg = tiny_cfg("data.name=null", f"data.path={folder}", "data.canvas_size=24", "data.max_fail_fraction=0.5",
                   "train.epochs=3")
    with pytest.warns(UserWarning):
        pretrain(cfg, tmp_path / "run")
    assert [r["failed_images"] for r in read_log(tmp_path / "run")][-1] == 2
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert len(state["failed_files"]) == 2


def test_the_failure_fraction_is_judged_over_enough_files(tmp_path, tiny_cfg):
    from PIL import Image

    folder = tmp_path / "many"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    for i in range(1005):
        (folder / f"{i:04d}.png").write_bytes((folder / "a.png").read_bytes())
    trainer = Trainer(tiny_cfg("data.name=null", f"data.path={folder}", "data.canvas_size=8"), tmp_path / "run")
    trainer.seen_images, trainer.failed_files = 104, {1, 2}
    trainer._check_failures(end_of_epoch=False)  # 2 of 104 is 1.9 %, but 104 files say little (before: stopped)
    trainer.seen_images, trainer.failed_files = 1006, set(range(10))
    trainer._check_failures(end_of_epoch=True)  # 10 of 1006 files: below 1 %
    trainer.failed_files = set(range(11))
    with pytest.raises(RuntimeError, match="11 of 1006 images could not be decoded"):
        trainer._check_failures(end_of_epoch=False)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_checkpoints_the_current_step_then_resume_is_exact(tmp_path, signum):
    """Before: SIGTERM (what schedulers send before a kill) lost up to checkpoint_every - 1 steps."""
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    args = ("train.max_steps=20", "train.checkpoint_every=100")  # no periodic checkpoint but at epoch ends
    subprocess.run(_cli(full, *args), check=True, capture_output=True)
    process = subprocess.Popen(_cli(stopped, *args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_log_lines(stopped, 3)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    step = torch.load(stopped / "checkpoint.pt", weights_only=True)["step"]
    assert 3 <= step < 20
    message = " ".join(err.split())
    assert (f"interrupted by {signal.Signals(signum).name} at step {step} of 20; the last checkpoint is step {step} "
            in message and "rerun the same command to resume" in message and "Traceback" not in err)
    subprocess.run(_cli(stopped, *args), check=True, capture_output=True)
    assert_same_state(full, stopped)


def test_full_resolution_crops_train_and_resume_exactly_with_any_number_of_workers(tmp_path, tiny_cfg):
    # data.crops auto = full for a folder: the loader cuts the crops from the 20-26 x 24 px files.
    folder = _folder(tmp_path, 24, corrupt=set())
    files = ["data.name=null", f"data.path={folder}", "train.epochs=2"]  # 3 steps per epoch
    full, parts, workers = tmp_path / "full", tmp_path / "parts", tmp_path / "workers"
    trainer = Trainer(tiny_cfg(*files), full)
    assert trainer.loader_views is not None and trainer.dataset[0]["globals"].shape == (2, 3, 16, 16)
    trainer.run()
    pretrain(tiny_cfg(*files, "train.max_steps=4"), parts)
    pretrain(tiny_cfg(*files), parts)
    assert_same_state(full, parts)
    pretrain(tiny_cfg(*files, "data.num_workers=2"), workers)  # boxes drawn per (seed, epoch, index)
    assert_same_state(full, workers)
    canvas = tmp_path / "canvas"
    pretrain(tiny_cfg(*files, "data.crops=canvas"), canvas)
    assert read_log(canvas)[-1]["loss"] != read_log(full)[-1]["loss"]
