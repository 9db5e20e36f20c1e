"""method: bootleg end to end: configs, run directory, EMA of the encoder, exact resume, errors."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from udi.cli import main
from udi.config import ConfigError, load_config, resolve_config_path
from udi.models.pretrained import load_backbone
from udi.train.loop import Trainer, pretrain

from .conftest import TINY

# TINY (16 px crops, patch 4: a 4 x 4 grid) as Bootleg, with a small predictor.
BOOTLEG = TINY + ["method=bootleg", "bootleg.min_context=2", "bootleg.predictor_depth=2"]


def bootleg_cfg(*extra):
    return load_config(None, BOOTLEG + list(extra))


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_shipped_bootleg_configs_load_and_validate():
    demo = load_config(resolve_config_path("bootleg_cpu_demo"))
    assert demo["method"] == "bootleg" and demo["data"]["name"] == "scenes"
    assert (demo["model"]["arch"], demo["model"]["patch_size"], demo["views"]["global_size"]) == ("vit_nano", 8, 32)
    in1k = load_config(resolve_config_path("bootleg_vits16_in1k"), ["data.path=/data/imagenet/train"])
    assert in1k["model"]["arch"] == "vit_small" and in1k["train"]["epochs"] == 300
    assert in1k["train"]["batch_size"] == 128 and in1k["bootleg"]["min_context"] == 10
    assert in1k["optim"]["lr"] * 1024 / 256 == pytest.approx(5e-4)  # I-JEPA's 1e-3 at 2048, scaled to 1024
    with pytest.raises(ConfigError, match="set exactly one of 'data.name'"):
        load_config(resolve_config_path("bootleg_vits16_in1k"))  # data.path must be set by the user


def test_demo_config_pretrains_a_few_steps(tmp_path):
    cfg = load_config(resolve_config_path("bootleg_cpu_demo"),
                      ["data.scenes_num_images=128", "train.max_steps=2", "train.log_every=1", "train.progress=false"])
    summary = pretrain(cfg, tmp_path)
    assert summary["step"] == 2 and math.isfinite(summary["loss"])
    assert {p.name for p in tmp_path.iterdir()} >= {"config.yaml", "log.jsonl", "checkpoint.pt", "backbone.safetensors"}
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == [1, 2]
    expected = {"loss", "block0", "block1", "block2", "block3", "context_tokens", "relaxed", "lr", "wd", "momentum",
                "images_per_sec", "failed_images"}
    assert expected <= set(log[0]) and "teacher_temp" not in log[0] and "cls" not in log[0]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in log)
    assert log[0]["loss"] == pytest.approx(sum(log[0][f"block{i}"] for i in range(4)) / 4, rel=1e-5)
    backbone = load_backbone(tmp_path)
    assert backbone.n_cls == 1 and backbone.embed_dim == 96
    assert backbone.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 17, 96)
    # The exported backbone is the teacher encoder of the checkpoint.
    teacher = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["teacher"]
    exported = load_file(tmp_path / "backbone.safetensors")
    assert set(teacher) == {f"backbone.{k}" for k in exported}
    assert all(torch.equal(teacher[f"backbone.{k}"], v) for k, v in exported.items())
    assert load_backbone(tmp_path / "checkpoint.pt").state_dict().keys() == exported.keys()


def test_teacher_is_an_ema_of_the_student_encoder(tmp_path):
    trainer = Trainer(bootleg_cfg("train.max_steps=1"), tmp_path)
    before = {k: v.clone() for k, v in trainer.teacher.backbone.state_dict().items()}
    batch = next(iter(torch.utils.data.DataLoader(trainer.dataset, batch_size=8)))
    out = trainer.train_step(batch, epoch=0)
    m = out["momentum"]
    student = trainer.student.backbone.state_dict()
    for key, value in trainer.teacher.backbone.state_dict().items():
        torch.testing.assert_close(value, m * before[key] + (1 - m) * student[key])
    assert not any(k.startswith("predictor") for k in trainer.teacher.state_dict())
    assert trainer.teacher.predictor is None


def _same_runs(run_a, run_b):
    a = torch.load(run_a / "checkpoint.pt", weights_only=True)
    b = torch.load(run_b / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"]
    for part in ("student", "teacher"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for group_a, group_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(group_a[k], group_b[k]) for k in group_a)
    backbone_a, backbone_b = load_file(run_a / "backbone.safetensors"), load_file(run_b / "backbone.safetensors")
    assert all(torch.equal(backbone_a[k], backbone_b[k]) for k in backbone_a)
    strip = lambda log: [{k: v for k, v in r.items() if k != "images_per_sec"} for r in log]
    assert strip(read_log(run_a)) == strip(read_log(run_b))


def test_resume_mid_epoch_is_exact(tmp_path):
    # 96 images / 8 per batch -> 12 steps per epoch; stop at 5 (mid-epoch), then at 14 (next epoch).
    full, parts = tmp_path / "full", tmp_path / "parts"
    pretrain(bootleg_cfg("train.max_steps=16", "model.drop_path_rate=0.1"), full)
    for steps in (5, 14, 16):
        pretrain(bootleg_cfg(f"train.max_steps={steps}", "model.drop_path_rate=0.1"), parts)
    _same_runs(full, parts)


def test_resume_with_other_bootleg_settings_is_refused(tmp_path):
    pretrain(bootleg_cfg("train.max_steps=1"), tmp_path)
    with pytest.raises(ConfigError, match="different 'bootleg' config"):
        pretrain(bootleg_cfg("train.max_steps=2", "bootleg.target_layers=[3]"), tmp_path)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(tmp_path, precision):
    summary = Trainer(bootleg_cfg(f"train.precision={precision}", "train.max_steps=2"), tmp_path).run()
    assert summary["step"] == 2 and math.isfinite(summary["loss"])


@pytest.mark.parametrize("override, message", [
    ("bootleg.min_context=20", r"bootleg.min_context=20 must be in \[1, 16\]"),
    ("bootleg.target_layers=3", "'bootleg.target_layers' must be \"auto\" or a non-empty list"),
    ("bootleg.target_layers=[9]", r"'bootleg.target_layers' .* \[0, 3\] \(this backbone has 4 blocks\)"),
    ("bootleg.loss=huber", "'bootleg.loss' must be one of smooth_l1, mse, l1"),
    ("bootleg.target_scale=[0.3, 0.2]", "'bootleg.target_scale' must be \\[low, high\\]"),
    ("bootleg.predictor_depth=0", "'bootleg.predictor_depth' must be a positive integer"),
])
def test_bad_bootleg_config_names_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        pretrain(bootleg_cfg(override, "train.max_steps=1"), tmp_path)


def test_cli_pretrain_then_eval_patch_mean(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--out", str(run), *BOOTLEG, "train.max_steps=2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2
    assert main(["eval", "knn", "--weights", str(run), "--data", "scenes", "--features", "patch_mean",
                 "--max-images", "64", "--no-progress"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["knn"]["patch_mean"]
    assert all(0 <= v <= 100 for v in metrics.values())
    # Without --features, a Bootleg backbone (method in its metadata) is evaluated on patch_mean.
    assert load_backbone(run).pretrain_method == "bootleg"
    assert load_backbone(run / "checkpoint.pt").pretrain_method == "bootleg"
    assert main(["eval", "knn", "--weights", str(run), "--data", "scenes", "--max-images", "64", "--no-progress"]) == 0
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["knn"]) == {"patch_mean"}


def _ddp_worker(rank, world, port, out_dir, result_dir):
    import os

    from udi.train.distributed import init_distributed, shutdown

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(bootleg_cfg("train.max_steps=3"), out_dir, init_distributed("cpu"))
    trainer.run()
    torch.save({"student": trainer.student.state_dict(), "teacher": trainer.teacher.state_dict()},
               os.path.join(result_dir, f"rank{rank}.pt"))
    shutdown()


@pytest.mark.slow  # two spawned processes: about 10 s, mostly start-up
def test_two_processes_stay_in_sync(tmp_path):
    import torch.multiprocessing as mp

    from .test_distributed import free_port

    out_dir, result_dir = tmp_path / "run", tmp_path / "results"
    result_dir.mkdir()
    mp.start_processes(_ddp_worker, args=(2, free_port(), str(out_dir), str(result_dir)), nprocs=2, start_method="spawn")
    states = [torch.load(result_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # Each process drew its own crops and masks (seeded by rank): equal weights show the gradient all-reduce.
    for part in ("student", "teacher"):
        for key, value in states[0][part].items():
            assert torch.equal(value, states[1][part][key]), f"{part}.{key} differs between processes"
    assert [r["step"] for r in read_log(out_dir)] == [1, 2, 3]
