"""The command line, end to end on tiny settings."""

import json

import pytest

from udi.cli import main

from .train.conftest import TINY

DIGITS = [o for o in TINY if not o.startswith("data.")] + ["data.name=digits", "data.num_workers=0"]


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_pretrain_then_eval_knn(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--out", str(run), *DIGITS, "train.max_steps=2"]) == 0
    assert last_json(capsys)["step"] == 2
    assert main(["eval", "knn", "--weights", str(run / "backbone.safetensors"), "--data", "digits",
                 "--out", str(tmp_path / "eval")]) == 0
    results = last_json(capsys)
    metrics = results["knn"]["cls"]
    assert set(metrics) == {"knn_top1_k10", "knn_top1_k20", "knn_top1_k100", "knn_top1_k200"}
    assert all(0 <= v <= 100 for v in metrics.values())
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == results
    assert "knn k20 [cls]" in (tmp_path / "eval" / "metrics.md").read_text()
    assert "images (train / val): knn 1438 / 359" in (tmp_path / "eval" / "metrics.md").read_text()
    assert results["images"] == {"knn": {"train": 1438, "val": 359}}
    assert main(["eval", "--protocols", "knn", "--weights", str(run), "--data", "digits", "--features", "cls_cat"]) == 0
    assert set(last_json(capsys)["knn"]["cls_cat"]) == set(metrics)


def test_demo_compares_with_random_init(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--protocols", "knn", *DIGITS, "train.max_steps=2"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    printed = " ".join((captured.out + captured.err).split())  # rich wraps long lines
    # Each verdict names its feature (rich must not read "[cls]" as markup and drop it).
    assert "knn k20 [cls]: " in printed and "knn k20 [patch_mean]: " in printed
    assert "random init" in result and any(k.startswith("udi teacher") for k in result)
    assert "knn k20 [cls]" in result["random init"]
    assert "knn k20 [cls+]" in result["random init"] and "knn k20 [patch_mean]" in result["random init"]
    assert (tmp_path / "eval" / "compare.md").exists()
    assert result["report"] == str(tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Evaluation</h2>" in page and "random init" in page  # the demo's comparison is in the report


def test_demo_random_init_is_the_runs_initial_weights(tmp_path, capsys):
    """The demo's baseline must be the network the run started from, whatever was loaded before."""
    import torch

    from udi.config import load_config, resolve_config_path
    from udi.eval.suite import SuiteOptions, run_suite, summarize
    from udi.methods import build_network

    assert main(["demo", "--out", str(tmp_path), "--protocols", "knn", *DIGITS, "train.max_steps=1"]) == 0
    reported = last_json(capsys)["random init"]
    cfg = load_config(resolve_config_path("udi_cpu_demo"), DIGITS + ["train.max_steps=1"])
    torch.manual_seed(cfg["train"]["seed"])
    initial = build_network(cfg).backbone.eval()
    features = {"knn": ["cls", "cls+", "patch_mean"]}  # the demo's k-NN features
    assert summarize(run_suite(initial, "digits", ["knn"], features, options=SuiteOptions(progress=False))) == reported


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pretrain", "--config", "no_such_config", "--out", "x"], "config not found"),
        (["pretrain", "--out", "x", "data.name=scenes", "train.batch_sise=3"], "unknown config key 'train.batch_sise'"),
        (["eval", "knn", "--weights", "/no/such/file.safetensors", "--data", "digits"], "weights not found"),
        (["eval", "--protocols", "linear_plus", "--weights", str(__file__), "--data", "digits"], "linear_plus"),
        # Brackets in a message are text, not markup.
        (["pretrain", "--out", "x", "data.name=scenes", "bootleg.target_scale=[0.5,0.2]"], "must be [low, high]"),
    ],
)
def test_errors_are_clear_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_readme_cpu_folder_example_runs(tmp_path, capsys):
    """The README's first-look command on a user's folder (2 steps here)."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "my_images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    argv = ["pretrain", "--config", "udi_cpu_demo", "--out", str(tmp_path / "cpu"), "data.name=null",
            f"data.path={folder}", "data.canvas_size=64", "views.global_size=32", "views.local_size=16",
            "train.eval_every=0", "train.max_steps=2", "train.batch_size=4", "train.progress=false"]
    assert main(argv) == 0
    assert last_json(capsys)["step"] == 2
    # Without train.eval_every=0 the demo config's online k-NN asks for labelled data, by name.
    with_monitor = [a for a in argv if a != "train.eval_every=0"]
    with_monitor[with_monitor.index("--out") + 1] = str(tmp_path / "cpu2")
    assert main(with_monitor) == 2
    assert "train.eval_data" in "".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("override, message", [
    ("model.patch_size=0", "'model.patch_size' must be an integer >= 1; got 0"),  # before: ZeroDivisionError
    ("head.out_dim=0", "'head.out_dim' must be an integer >= 1; got 0"),  # before: IndexError
    ("loss.teacher_temp=0", "'loss.teacher_temp' must be a number > 0; got 0"),  # before: NaN at step 1
    ("optim.lr=-0.1", "'optim.lr' must be a number > 0; got -0.1"),  # before: accepted, and trained
    ("views.local_scale=[0.5,0.1]", "'views.local_scale' must be [low, high] with 0 < low <= high <= 1"),
])
def test_values_that_would_break_training_are_refused(tmp_path, override, message, err_contains):
    assert main(["pretrain", "--out", str(tmp_path / "run"), *DIGITS, override]) == 2
    assert err_contains(message) and not (tmp_path / "run").exists()


def test_a_non_finite_loss_is_one_error_line(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path), *DIGITS, "optim.lr=1e30", "optim.warmup_epochs=0",
                 "optim.clip_grad=0", "train.max_steps=5"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: loss term") and "at step" in err


def test_compare_keeps_runs_whose_folders_share_a_name(tmp_path, capsys):
    """Before: a/run and b/run gave one row ('run') and shared one feature cache."""
    import torch

    from udi.cli import run_names
    from udi.io.checkpoint import export_backbone
    from udi.models.vit import build_vit

    for i, parent in enumerate(("a", "b")):
        torch.manual_seed(i)
        (tmp_path / parent / "run").mkdir(parents=True)
        export_backbone(tmp_path / parent / "run" / "backbone.safetensors",
                        build_vit("vit_nano", patch_size=8, img_size=16, depth=1), {"step": 10 + i})
    runs = [str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")]
    out = tmp_path / "out"
    assert main(["compare", *runs, "--data", "digits", "--protocols", "knn", "--max-images", "64", "--no-progress",
                 "--out", str(out)]) == 0
    rows = last_json(capsys)
    assert list(rows) == ["a/run", "b/run"] and rows["a/run"] != rows["b/run"]
    assert (out / "a_run" / "features_train.pt").is_file() and (out / "b_run" / "features_train.pt").is_file()
    saved = json.loads((out / "compare.json").read_text())
    assert [saved[n]["source"]["weights"] for n in rows] == [str(tmp_path.resolve() / p / "run") for p in "ab"]
    assert [saved[n]["source"]["step"] for n in rows] == [10, 11]
    assert run_names(["x/run", "y/other"]) == {"run": "x/run", "other": "y/other"}
    assert list(run_names([str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run" / "backbone.safetensors")])) == [
        "run", "backbone"]
    with pytest.raises(ValueError, match="more than once"):
        run_names(["x/run", "x/../x/run"])
