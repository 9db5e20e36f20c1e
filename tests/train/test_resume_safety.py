"""Safe resume: the run-directory lock, changed settings, --restart, --allow-changes, finished
runs, train.keep_checkpoints, checkpoints from before a config key existed."""

import copy
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from udi.config import DEFAULTS, ConfigError, resume_changes
from udi.train.lock import LOCK, RunLockedError
from udi.train.loop import Trainer, pretrain

SHORT = ("data.scenes_num_images=32",)  # 4 steps per epoch, 3 epochs


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def write_lock(run, pid, host=None):
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


def test_a_live_holder_refuses_a_second_process_and_a_dead_ones_lock_is_taken_over(tmp_path, tiny_cfg, monkeypatch):
    run = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_lock(run, sleeper.pid)
        with pytest.raises(RunLockedError, match=rf"in use by process {sleeper.pid} on "):
            pretrain(tiny_cfg(*SHORT, "train.max_steps=1"), run)
        assert not (run / "log.jsonl").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    held = []
    real_save = Trainer.save
    monkeypatch.setattr(Trainer, "save", lambda self: (held.append(json.loads((run / LOCK).read_text())),
                                                       real_save(self)))
    pretrain(tiny_cfg(*SHORT, "train.max_steps=1"), run)  # the sleeper is dead: its lock is stale
    assert held[0]["pid"] == os.getpid() and held[0]["host"] == socket.gethostname()
    assert not (run / LOCK).exists()  # released at the end


def test_a_lock_from_another_host_is_not_taken_over(tmp_path, tiny_cfg):
    write_lock(tmp_path, 1, host="some-other-node")
    with pytest.raises(RunLockedError, match=rf"process 1 on some-other-node.*delete {tmp_path / LOCK}"):
        pretrain(tiny_cfg(*SHORT, "train.max_steps=1"), tmp_path)


def test_the_lock_is_released_when_training_fails(tmp_path, tiny_cfg, monkeypatch):
    monkeypatch.setattr(Trainer, "train_step", lambda *args: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        pretrain(tiny_cfg(*SHORT, "train.max_steps=1"), tmp_path)
    assert not (tmp_path / LOCK).exists()


def test_changed_learning_rate_is_an_error_naming_old_and_new(tmp_path, tiny_cfg):
    pretrain(tiny_cfg(*SHORT, "train.max_steps=2"), tmp_path)
    before = (tmp_path / "log.jsonl").read_text()
    with pytest.raises(ConfigError) as error:
        pretrain(tiny_cfg(*SHORT, "train.max_steps=3", "optim.lr=0.1", "train.epochs=4"), tmp_path)
    message = str(error.value)
    assert "a different 'optim' config (optim.lr 0.0005 -> 0.1)" in message
    assert "a different 'train' config (train.epochs 3 -> 4)" in message
    assert "--allow-changes" in message and "--restart" in message
    assert (tmp_path / "log.jsonl").read_text() == before
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 2


def test_changed_max_steps_and_reporting_keys_resume_and_say_so(tmp_path, tiny_cfg, capsys):
    pretrain(tiny_cfg(*SHORT, "train.max_steps=2"), tmp_path)
    capsys.readouterr()
    summary = pretrain(tiny_cfg(*SHORT, "train.max_steps=3", "train.log_every=2", "train.checkpoint_every=1",
                                "train.eval_every=0", "data.num_workers=0", "train.keep_checkpoints=1"), tmp_path)
    assert summary["step"] == 3
    assert "resuming from step 2 of 3" in capsys.readouterr().out
    assert "resuming from step 2 of 3" in (tmp_path / "train.log").read_text()


def test_allow_changes_resumes_and_records_the_change(tmp_path, tiny_cfg):
    pretrain(tiny_cfg(*SHORT, "train.max_steps=2"), tmp_path)
    pretrain(tiny_cfg(*SHORT, "train.max_steps=3", "optim.lr=0.1"), tmp_path, allow_changes=True)
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3]
    text = (tmp_path / "train.log").read_text()
    assert "resuming from step 2 with changed settings (--allow-changes): optim.lr 0.0005 -> 0.1" in text
    # the checkpoint now holds the new settings: resuming with them again needs nothing
    pretrain(tiny_cfg(*SHORT, "train.max_steps=4", "optim.lr=0.1"), tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 4


def test_restart_sets_the_old_files_aside_and_trains_from_step_zero(tmp_path, tiny_cfg):
    pretrain(tiny_cfg(*SHORT, "train.max_steps=2"), tmp_path)
    old_log = (tmp_path / "log.jsonl").read_text()
    pretrain(tiny_cfg(*SHORT, "train.max_steps=3", "optim.lr=0.1"), tmp_path, restart=True)
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("before-restart-")]
    assert len(backups) == 1 and backups[0].is_dir()
    assert (backups[0] / "log.jsonl").read_text() == old_log
    assert torch.load(backups[0] / "checkpoint.pt", weights_only=True)["step"] == 2
    assert {"config.yaml", "backbone.safetensors"} <= {p.name for p in backups[0].iterdir()}
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and state["config"]["optim"]["lr"] == 0.1
    assert "training from step 0" in (tmp_path / "train.log").read_text()


def test_a_finished_run_says_so_and_does_nothing(tmp_path, tiny_cfg, capsys):
    first = pretrain(tiny_cfg(*SHORT, "train.max_steps=2"), tmp_path)
    files = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir() if p.is_file()}
    capsys.readouterr()
    again = pretrain(tiny_cfg(*SHORT, "train.max_steps=2"), tmp_path)
    assert "the run is finished" in capsys.readouterr().out
    assert again == first  # the step and the loss terms of its last logged step
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir() if p.is_file()} == files


def test_keep_checkpoints_keeps_every_nth_epoch(tmp_path, tiny_cfg):
    pretrain(tiny_cfg(*SHORT, "train.epochs=4", "train.keep_checkpoints=2"), tmp_path)  # 16 steps
    kept = sorted(p.name for p in tmp_path.glob("checkpoint*.pt"))
    assert kept == ["checkpoint.pt", "checkpoint_epoch0002.pt", "checkpoint_epoch0004.pt"]
    assert torch.load(tmp_path / "checkpoint_epoch0002.pt", weights_only=True)["step"] == 8
    assert torch.load(tmp_path / "checkpoint_epoch0004.pt", weights_only=True)["step"] == 16
    with pytest.raises(ConfigError, match="train.keep_checkpoints"):
        tiny_cfg("train.keep_checkpoints=-1")


def test_a_checkpoint_without_a_newer_key_resumes_when_it_keeps_its_default(tmp_path, tiny_cfg):
    pretrain(tiny_cfg(*SHORT, "train.max_steps=2"), tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del state["config"]["loss"]["koleo_weight"], state["config"]["bootleg"]  # as written before they existed
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match=r"loss.koleo_weight 0.0 -> 0.1"):
        pretrain(tiny_cfg(*SHORT, "train.max_steps=3", "loss.koleo_weight=0.1"), tmp_path)
    assert pretrain(tiny_cfg(*SHORT, "train.max_steps=3"), tmp_path)["step"] == 3


def test_resume_changes_compares_every_trajectory_key_and_ignores_the_rest(tiny_cfg):
    saved = tiny_cfg()
    cfg = tiny_cfg("train.max_steps=7", "train.progress=true", "eval.batch_size=3", "train.device=auto",
                   "views.n_local=4", "train.seed=1")
    assert resume_changes(saved, cfg) == [("train.seed", 0, 1), ("views.n_local", 2, 4)]
    saved["removed_section"] = {"gone": 1}  # a key that no longer exists: ignored
    del saved["udi"]["alpha"]
    assert resume_changes(saved, tiny_cfg()) == []
    assert resume_changes(saved, tiny_cfg("udi.alpha=0.25")) == [("udi.alpha", DEFAULTS["udi"]["alpha"], 0.25)]


def test_cli_flags(tmp_path, tiny_overrides, capsys):
    from udi.cli import main

    base = ["pretrain", "--out", str(tmp_path), *tiny_overrides, *SHORT]
    assert main([*base, "train.max_steps=1"]) == 0
    assert main([*base, "train.max_steps=2", "optim.lr=0.1"]) == 2
    assert "optim.lr 0.0005 -> 0.1" in " ".join(capsys.readouterr().err.split())
    assert main([*base, "train.max_steps=2", "optim.lr=0.1", "--allow-changes"]) == 0
    assert main([*base, "train.max_steps=1", "--restart"]) == 0
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 1


def test_a_folder_run_from_before_data_crops_keeps_its_canvas_crops(tiny_cfg):
    # Such a checkpoint cut its crops from the canvas; "auto" now means full-resolution crops for a
    # folder: resuming with the default would change the trajectory without a word.
    folder = ["data.name=null", "data.path=/some/folder"]
    saved = copy.deepcopy(tiny_cfg(*folder))
    del saved["data"]["crops"]
    assert resume_changes(saved, tiny_cfg(*folder)) == [("data.crops", "canvas", "auto")]
    assert resume_changes(saved, tiny_cfg(*folder, "data.crops=canvas")) == []
    built_in = copy.deepcopy(tiny_cfg())  # scenes: auto is the canvas, as before
    del built_in["data"]["crops"]
    assert resume_changes(built_in, tiny_cfg()) == []
