"""`udi eval` end to end on a tiny checkpoint: every protocol, cached features, outputs."""

import json
import warnings
from contextlib import nullcontext

import pytest
import torch

from udi.cli import main
from udi.eval.suite import SuiteOptions, labelled_splits, run_suite, summarize
from udi.models.vit import build_vit
from udi.io.checkpoint import export_backbone

FAST = ["--linear-epochs", "2", "--selagg-epochs", "2", "--dense-epochs", "2", "--max-images", "300", "--no-progress"]


def tiny_backbone(tmp_path):
    torch.manual_seed(0)
    model = build_vit("vit_nano", patch_size=8, img_size=16, n_cls=2, depth=2)
    export_backbone(tmp_path / "backbone.safetensors", model)
    return tmp_path / "backbone.safetensors"


def test_every_protocol_end_to_end_on_scenes(tmp_path, capsys):
    weights = tiny_backbone(tmp_path)
    out = tmp_path / "eval"
    assert main(["eval", "--weights", str(weights), "--data", "scenes", "--out", str(out), *FAST]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(results) == {"source", "seconds", "images", "chance", "knn", "linear", "lowshot", "selagg", "layers",
                            "dense", "richness", "attnstats"}
    assert list(results["seconds"]) == ["knn", "lowshot", "layers", "richness", "dense", "attnstats", "selagg", "linear"]
    assert results["images"]["attnstats"] == {"train": 0, "val": 300} and results["images"]["knn"]["train"] == 300
    assert set(results["chance"]) == {"label", "present", "color", "position", "count", "background"}
    assert all(0 < v < 100 for v in results["chance"].values())
    assert set(results["knn"]) == {"cls"} and set(results["linear"]) == {"last2"}  # the papers' defaults
    assert set(results["richness"]) == {"cls", "cls+", "cls_cat", "patch_mean"}  # one row per feature
    assert set(results["layers"]["layers"]) == {"block0_cls", "block0_patch_mean", "block1_cls", "block1_patch_mean"}
    assert results["linear"]["last2"]["augmented"] is True
    assert 0 <= results["dense"]["dense_miou"] <= 100
    assert len(results["attnstats"]["blocks"]) == 2
    for name in ("metrics.json", "metrics.md", "features_train.pt", "features_val.pt", "attnstats.json",
                 "attn_cls_entropy.png", "attn_cls_to_cls.png", "attn_patch_entropy.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "metrics.json").read_text()) == results


def test_features_are_extracted_once_and_reused(tmp_path, monkeypatch):
    weights = tiny_backbone(tmp_path)
    from udi.models.pretrained import load_backbone

    backbone = load_backbone(weights)
    calls = []
    import udi.eval.suite as suite

    real = suite.extract_bank
    monkeypatch.setattr(suite, "extract_bank", lambda *a, **k: calls.append(k["description"]) or real(*a, **k))
    options = SuiteOptions(max_images=64, progress=False, linear_augment=False, linear_epochs=1, lowshot_repeats=1)
    first = run_suite(backbone, "digits", ["knn", "linear", "lowshot"], out_dir=tmp_path / "o", options=options)
    assert calls == ["train features", "val features"]  # one pass per split for three protocols
    second = run_suite(backbone, "digits", ["knn", "linear", "lowshot"], out_dir=tmp_path / "o", options=options)
    assert calls == ["train features", "val features"]  # cached on disk
    assert summarize(first) == summarize(second)
    with torch.no_grad():
        backbone.norm.weight.add_(1.0)  # other weights, same everything else
    run_suite(backbone, "digits", ["knn"], out_dir=tmp_path / "o", options=options)
    assert len(calls) == 4  # the cache key follows the weights


def test_features_per_protocol(tmp_path):
    from udi.models.pretrained import load_backbone

    backbone = load_backbone(tiny_backbone(tmp_path))
    options = SuiteOptions(max_images=64, progress=False, lowshot_repeats=1)
    results = run_suite(backbone, "digits", ["knn", "lowshot"], {"knn": ["cls", "patch_mean"]}, options=options)
    assert set(results["knn"]) == {"cls", "patch_mean"}
    assert set(results["lowshot"]) == {"cls"}  # not named in the dict: its default
    with pytest.raises(ValueError, match="only knn, linear, lowshot, richness take features"):
        run_suite(backbone, "digits", ["knn"], {"dense": ["cls"]}, options=options)


def test_compare_marks_best_per_column(tmp_path, capsys):
    weights = tiny_backbone(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    torch.manual_seed(1)
    export_backbone(other / "backbone.safetensors", build_vit("vit_nano", patch_size=8, img_size=16, n_cls=1, depth=2))
    out = tmp_path / "cmp"
    assert main(["compare", str(weights), str(other), "--data", "digits", "--protocols", "knn",
                 "--out", str(out), "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(rows) == {"backbone", "other"}
    table = (out / "compare.md").read_text()
    assert table.startswith("| model | knn k20 [cls] |") and table.count("**") == 2  # one best cell


def test_compare_table_transposes_when_too_wide():
    from rich.console import Console

    from udi.eval.tables import compare_table

    rows = {"udi": {f"metric {i}": float(i) for i in range(12)}, "dino": {f"metric {i}": 1.0 for i in range(12)}}
    console = Console(width=80, record=True)
    console.print(compare_table(rows, width=80))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "metric 11" in text and "11.00*" in text  # metrics as rows, best still marked
    wide = compare_table(rows, width=1000)
    assert [c.header for c in wide.columns][:2] == ["model", "metric 0"]


def _colour_folders(root, layout):
    """``layout``: split -> class names; every image of class c is a solid colour of its own."""
    from PIL import Image

    colours = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)}
    for split, classes in layout.items():
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (16, 16), colours[name]).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize("layout, expected", [
    ({"train": "abc", "val": "ac"}, 100.0),  # before: val c took train b's label (50 %)
    ({"train": "ac", "val": "abc"}, 200 / 3),  # b has no train image: its val images are errors (before: 33.33 %)
])
def test_folder_splits_share_one_class_list(tmp_path, layout, expected):
    from udi.eval.baselines import RawPixels

    root = _colour_folders(tmp_path, layout)
    with pytest.warns(UserWarning, match="b have no train images") if layout["val"] == "abc" else nullcontext():
        train_set, val_set = labelled_splits(str(root))
    assert train_set.classes == val_set.classes == sorted(set(layout["train"]) | set(layout["val"]))
    pixels = RawPixels(build_vit("vit_nano", patch_size=4, img_size=16, depth=1), center=False)
    options = SuiteOptions(progress=False, knn_k=(3,), image_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = run_suite(pixels, str(root), ["knn"], options=options)
    assert results["knn"]["cls"]["knn_top1_k3"] == pytest.approx(expected)


def test_folder_evaluation_needs_labels(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / split / "x.png")
    with pytest.raises(ValueError, match="no class subfolders"):
        labelled_splits(str(tmp_path))


def test_a_torn_feature_cache_is_recomputed(tmp_path):
    from udi.models.pretrained import load_backbone

    backbone = load_backbone(tiny_backbone(tmp_path))
    options = SuiteOptions(max_images=64, progress=False)
    first = run_suite(backbone, "digits", ["knn"], out_dir=tmp_path / "o", options=options)
    cache = tmp_path / "o" / "features_train.pt"
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # as a kill mid-write once left it
    with pytest.warns(UserWarning, match="cannot be read"):
        second = run_suite(backbone, "digits", ["knn"], out_dir=tmp_path / "o", options=options)
    assert summarize(first) == summarize(second)
    assert torch.load(cache, weights_only=True)["key"]  # replaced by a whole one
    assert not list((tmp_path / "o").glob(".*.tmp"))


def test_fast_protocols_run_first_whatever_the_order_asked():
    from udi.eval.suite import PROTOCOLS, check_protocols

    assert PROTOCOLS == ("knn", "lowshot", "layers", "richness", "dense", "attnstats", "selagg", "linear")
    assert check_protocols("scenes", ["linear", "selagg", "knn", "lowshot"]) == ["knn", "lowshot", "selagg", "linear"]
    assert check_protocols("digits", None) == ["knn", "lowshot", "layers", "attnstats", "selagg", "linear"]


def test_metrics_json_names_its_source(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_vit("vit_nano", patch_size=8, img_size=16, n_cls=2, depth=2)
    model.pretrain_method = "udi"
    export_backbone(tmp_path / "backbone.safetensors", model, {"method": "udi", "step": 7})
    out = tmp_path / "eval"
    assert main(["eval", "knn", "--weights", str(tmp_path), "--data", "digits", "--out", str(out),
                 "--max-images", "64", "--no-progress"]) == 0
    source = json.loads((out / "metrics.json").read_text())["source"]
    assert source["weights"] == str(tmp_path.resolve()) and source["step"] == 7 and source["method"] == "udi"
    assert source["architecture"]["embed_dim"] == 96 and source["architecture"]["depth"] == 2
    assert source["data"] == "digits" and source["data_sizes"] == {"train": 1438, "val": 359}
    assert source["images_used"] == {"train": 64, "val": 64}
    assert source["image_size"] == 16 and source["crop_fraction"] == 1.0 and source["protocols"] == ["knn"]
    assert source["features"] == {"knn": ["cls"]}
    assert source["options"]["knn_k"] == [10, 20, 100, 200] and source["options"]["max_images"] == 64
    import udi

    assert source["udi_version"] == udi.__version__ and source["date"][:2] == "20"
    note = "".join((out / "metrics.md").read_text().split())
    assert "".join(f"source: {tmp_path.resolve()} (step 7), method udi".split()) in note


def test_an_interrupted_evaluation_keeps_the_protocols_it_finished(tmp_path, monkeypatch):
    from udi.cli import evaluate
    from udi.eval import runners
    from udi.models.pretrained import load_backbone

    def broken(**_):
        raise RuntimeError("lowshot broke")

    monkeypatch.setattr(runners, "run_lowshot", broken)
    weights = tiny_backbone(tmp_path)
    out = tmp_path / "eval"
    options = SuiteOptions(max_images=64, progress=False)
    with pytest.raises(RuntimeError, match="lowshot broke"):  # knn runs first, whatever the order given
        evaluate(load_backbone(weights), "tiny", "digits", ["lowshot", "knn"], None, out, "cpu", options, weights)
    partial = json.loads((out / "metrics.json").read_text())
    assert "knn" in partial and "lowshot" not in partial and partial["source"]["protocols"] == ["knn", "lowshot"]
    assert set(partial["seconds"]) == {"knn"} and "chance" in partial


@pytest.mark.parametrize("threshold, asked, augmented", [(100, None, True), (10, None, False), (10, True, True),
                                                         (100, False, False)])
def test_linear_probe_is_cached_by_default_above_a_train_size(tmp_path, monkeypatch, threshold, asked, augmented):
    from udi.eval import runners, suite
    from udi.eval.suite import linear_note

    calls = []
    fake = {"linear_top1_best": 50.0, "linear_top1_final": 50.0}
    monkeypatch.setattr(runners, "train_linear_augmented", lambda *a, **k: calls.append("augmented") or dict(fake))
    monkeypatch.setattr(runners, "train_linear_on_features", lambda *a, **k: calls.append("cached") or dict(fake))
    monkeypatch.setattr(suite, "LINEAR_AUGMENT_MAX_TRAIN", threshold)
    from udi.models.pretrained import load_backbone

    backbone = load_backbone(tiny_backbone(tmp_path))
    options = SuiteOptions(max_images=40, progress=False, linear_augment=asked)
    results = run_suite(backbone, "digits", ["linear"], options=options)
    assert calls == ["augmented" if augmented else "cached"]
    assert results["linear"]["last2"]["augmented"] is augmented
    assert results["source"]["options"]["linear_augment"] is augmented
    assert linear_note(results).startswith("linear probe: augmented" if augmented else "linear probe: cached")


def test_linear_probe_flags_on_the_command_line():
    from udi.cli import _suite_options, build_parser

    parse = lambda *a: _suite_options(build_parser().parse_args(["eval", "--weights", "w", "--data", "d", *a]))
    assert parse().linear_augment is None
    assert parse("--linear-cached").linear_augment is False
    assert parse("--linear-augmented").linear_augment is True
    with pytest.raises(SystemExit):
        parse("--linear-cached", "--linear-augmented")
