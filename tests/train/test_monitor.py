"""Online k-NN monitoring (udi.train.monitor, train.eval_every)."""
import json

import pytest
import torch

from udi.config import ConfigError, load_config
from udi.eval.suite import SuiteOptions, run_suite, summarize
from udi.models.vit import build_vit
from udi.train.loop import pretrain
from udi.train.monitor import KnnMonitor

from .conftest import TINY


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_logged_at_every_eval_step_and_at_the_end(tmp_path, tiny_cfg):
    cfg = tiny_cfg("train.max_steps=5", "train.log_every=4", "train.eval_every=2", "train.eval_images=48")
    pretrain(cfg, tmp_path)
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == [2, 4, 5]  # log_every 4, plus every evaluation and the last step
    for record in log:
        assert {"knn_cls", "knn_cls_plus", "knn_patch_mean"} <= set(record)
        assert all(0.0 <= record[k] <= 100.0 for k in ("knn_cls", "knn_cls_plus", "knn_patch_mean"))


def test_monitoring_does_not_change_training(tmp_path, tiny_cfg):
    plain, watched = tmp_path / "plain", tmp_path / "watched"
    pretrain(tiny_cfg("train.max_steps=4"), plain)
    pretrain(tiny_cfg("train.max_steps=4", "train.eval_every=1", "train.eval_images=16"), watched)
    a, b = (torch.load(run / "checkpoint.pt", weights_only=True) for run in (plain, watched))
    assert all(torch.equal(a["teacher"][k], b["teacher"][k]) for k in a["teacher"])
    losses = lambda run: [r["loss"] for r in read_log(run)]
    assert losses(plain) == losses(watched)


def test_equals_the_suites_knn_on_the_same_images(tiny_cfg):
    cfg = tiny_cfg("train.eval_every=10", "train.eval_data=digits", "train.eval_images=100000")  # all digits
    monitor = KnnMonitor(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    backbone = build_vit("vit_nano", patch_size=4, img_size=16).eval()
    expected = summarize(run_suite(backbone, "digits", ["knn"], ["cls", "patch_mean"],
                                   options=SuiteOptions(progress=False)))
    got = monitor(backbone)
    assert got == {"knn_cls": expected["knn k20 [cls]"], "knn_patch_mean": expected["knn k20 [patch_mean]"]}


def test_a_folder_run_must_name_its_eval_data(tmp_path):
    (tmp_path / "imgs").mkdir()
    cfg = load_config(None, [o for o in TINY if not o.startswith("data.name")] +
                      [f"data.path={tmp_path / 'imgs'}", "train.eval_every=5"])
    with pytest.raises(ConfigError, match="'train.eval_every' needs labelled data: set 'train.eval_data'"):
        KnnMonitor(cfg, torch.device("cpu"))
    cfg["train"]["eval_data"] = str(tmp_path / "imgs")
    with pytest.raises(ConfigError, match="'train.eval_data': .* train/ and val/"):
        KnnMonitor(cfg, torch.device("cpu"))


@pytest.mark.parametrize("override, message", [("train.eval_every=-1", "'train.eval_every' must be an integer >= 0"),
                                               ("train.eval_images=0", "'train.eval_images' must be an integer >= 1")])
def test_bad_monitor_keys(tiny_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_cfg(override)


def test_a_folder_eval_data_is_read_as_udi_eval_reads_it(tmp_path, tiny_cfg):
    # The centre crop from the full-resolution file at the training size, not the squashed canvas.
    import numpy as np
    from PIL import Image

    from udi.models.backbone import build_backbone
    from udi.train.monitor import KnnMonitor

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (tmp_path / "eval" / split / label).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
                    tmp_path / "eval" / split / label / f"{i}.png")
    cfg = tiny_cfg("train.eval_every=10", f"train.eval_data={tmp_path / 'eval'}")
    monitor = KnnMonitor(cfg, torch.device("cpu"))
    item = monitor.train_set[0]
    assert item.get("cropped") and item["image"].shape == (3, 16, 16)
    scores = monitor(build_backbone(cfg, n_cls=2))
    assert set(scores) >= {"knn_cls", "knn_patch_mean"} and all(0 <= v <= 100 for v in scores.values())
