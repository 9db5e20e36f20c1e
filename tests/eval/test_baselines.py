"""Reference rows (udi.eval.baselines): raw pixels, random init, chance levels; --baselines."""
import json

import pytest
import torch

from udi.cli import main
from udi.config import load_config
from udi.eval.baselines import (RAW_PIXELS, RAW_PIXELS_CENTERED, RANDOM_INIT, RawPixels, chance_levels, chance_row,
                                pixel_baselines, random_init)
from udi.eval.features import eval_crops
from udi.eval.knn import knn_accuracy
from udi.eval.subsets import stratified_subset
from udi.eval.suite import SuiteOptions, labelled_splits, run_suite
from udi.io.checkpoint import export_backbone
from udi.models.vit import build_vit
from udi.train.loop import Trainer

from ..train.conftest import TINY

OPTIONS = SuiteOptions(max_images=120, progress=False, lowshot_repeats=1, linear_epochs=2)


def small_backbone(n_cls=2):
    torch.manual_seed(0)
    return build_vit("vit_nano", patch_size=4, img_size=16, n_cls=n_cls, depth=2).eval()


def pixels_by_hand(dataset, center):
    rows, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        crop = eval_crops(item["image"][None], torch.tensor([item["aspect"]]), 16, 1.0).flatten(1)
        rows.append(crop - crop.mean() if center else crop)
        labels.append(item["label"])
    return torch.cat(rows), torch.tensor(labels)


@pytest.mark.parametrize("center", [False, True])
def test_raw_pixels_equal_knn_on_the_pixels(center):
    pixels = RawPixels(small_backbone(), center=center)
    results = run_suite(pixels, "digits", ["knn"], options=OPTIONS)
    train_set, val_set = (stratified_subset(s, 120) for s in labelled_splits("digits"))
    (train_x, train_y), (val_x, val_y) = pixels_by_hand(train_set, center), pixels_by_hand(val_set, center)
    expected = knn_accuracy(train_x, train_y, val_x, val_y, OPTIONS.knn_k, OPTIONS.knn_temperature)
    assert results["knn"] == {"cls": expected}


def test_raw_pixels_fill_every_feature_column_and_skip_network_protocols():
    pixels = RawPixels(small_backbone(n_cls=2), center=False)
    results = run_suite(pixels, "digits", ["knn", "linear", "layers", "attnstats"],
                        {"knn": ["cls", "cls+", "patch_mean"]}, options=OPTIONS)
    assert set(results) == {"source", "seconds", "images", "chance", "knn", "linear"}  # no network: no layers, no attention
    assert results["knn"]["cls"] == results["knn"]["cls+"] == results["knn"]["patch_mean"]
    assert set(results["linear"]) == {"last2"} and results["linear"]["last2"]["augmented"] is False
    assert set(pixel_baselines(small_backbone())) == {RAW_PIXELS, RAW_PIXELS_CENTERED}


def test_random_init_is_the_runs_step_zero_backbone(tmp_path):
    cfg = load_config(None, TINY + ["train.seed=5"])
    initial = Trainer(cfg, tmp_path).teacher.backbone  # before any step: the run's starting weights
    trained = small_backbone()
    with torch.no_grad():
        trained.pos_embed.add_(1.0)  # "trained" weights
    trained.pretrain_method = "udi"
    before = torch.random.get_rng_state()
    fresh = random_init(initial, cfg)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in initial.state_dict().items())
    other = random_init(trained)  # no config: the same architecture, seeded
    assert other.arch_config() == trained.arch_config() and other.pretrain_method == "udi" and not other.training
    assert not torch.equal(other.pos_embed, trained.pos_embed)
    assert torch.equal(random_init(trained).pos_embed, other.pos_embed)  # deterministic


def test_chance_levels_by_hand():
    train = {"label": torch.tensor([0, 1, 1, 2]), "color": torch.tensor([3, 3, 1, 1]),
             "present": torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0]]).float()}
    val = {"label": torch.tensor([1, 0, 1, 1, 2]), "color": torch.tensor([1, 1, 3, 0, 0]),
           "present": torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]]).float()}
    levels = chance_levels(train, val)
    assert levels["label"] == pytest.approx(60.0)  # train majority 1: 3 of 5 val
    assert levels["color"] == pytest.approx(40.0)  # tie 1 / 3: the smallest value (1) is predicted, 2 of 5
    assert levels["present"] == pytest.approx(100 * (3 / 5 + 1 / 5) / 2)  # class 2 has no positive: skipped
    row = chance_row(levels, ["knn k20 [cls]", "10% shot [cls]", "linear [last4]", "present_map [cls]",
                              "color_acc [cls+]", "count_acc [cls]", "dense mIoU"])
    assert row == {"knn k20 [cls]": 60.0, "10% shot [cls]": 60.0, "linear [last4]": 60.0,
                   "present_map [cls]": levels["present"], "color_acc [cls+]": 40.0}


def test_compare_and_eval_with_baselines(tmp_path, capsys):
    export_backbone(tmp_path / "backbone.safetensors", small_backbone(), {"method": "udi"})
    out = tmp_path / "cmp"
    args = ["--data", "digits", "--protocols", "knn", "--max-images", "100", "--no-progress", "--baselines"]
    assert main(["compare", str(tmp_path / "backbone.safetensors"), "--out", str(out), *args]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(rows) == ["backbone", RANDOM_INIT, RAW_PIXELS, RAW_PIXELS_CENTERED]
    table = (out / "compare.md").read_text()
    assert "| chance |" in table and "| raw pixels (mean removed) |" in table
    chance_line = next(line for line in table.splitlines() if line.startswith("| chance |"))
    assert "**" not in chance_line and "**" in table  # the best among the models; chance is not a model
    assert main(["eval", "--weights", str(tmp_path / "backbone.safetensors"), *args]) == 0
    captured = capsys.readouterr()
    assert list(json.loads(captured.out.strip().splitlines()[-1])) == ["backbone.safetensors", *list(rows)[1:]]
    assert "thesamevectorineveryfeaturecolumn" in "".join(captured.err.split())  # the console wraps lines


def test_eval_prints_the_chance_level_beside_each_metric(tmp_path, capsys):
    export_backbone(tmp_path / "backbone.safetensors", small_backbone())
    assert main(["eval", "knn", "--weights", str(tmp_path / "backbone.safetensors"), "--data", "digits",
                 "--max-images", "100", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "chance" in err


def test_pixel_rows_can_leave_slow_protocols_out():
    from udi.eval.baselines import pixel_note

    pixels = RawPixels(small_backbone(), center=True, protocols=("knn",))
    results = run_suite(pixels, "digits", ["knn", "lowshot"], options=OPTIONS)
    assert set(results) == {"source", "seconds", "images", "chance", "knn"}
    assert pixel_note(pixels, ["knn", "lowshot", "dense"]).endswith("; lowshot not run for them here (slow on pixels)")
    assert pixel_note(RawPixels(small_backbone(), center=False), ["knn"]).endswith("are not run for them")
    with pytest.raises(ValueError, match="raw pixels cannot run \\['dense'\\]"):
        RawPixels(small_backbone(), center=False, protocols=("knn", "dense"))


def test_verdicts_state_every_margin():
    from udi.eval.baselines import CHANCE, verdicts

    rows = {"teacher": {"knn k20 [cls]": 40.0, "color_acc [cls]": 90.0},
            RANDOM_INIT: {"knn k20 [cls]": 17.5, "color_acc [cls]": 95.0},
            RAW_PIXELS: {"knn k20 [cls]": 40.0}, RAW_PIXELS_CENTERED: {"knn k20 [cls]": 45.9},
            CHANCE: {"knn k20 [cls]": 10.15}}
    assert verdicts(rows, "teacher") == [
        "knn k20 [cls]: 40.00, above random init (17.50) by 22.50, equal to raw pixels (40.00), "
        "below raw pixels (mean removed) (45.90) by 5.90, above chance (10.15) by 29.85",
        "color_acc [cls]: 90.00, below random init (95.00) by 5.00",
    ]
