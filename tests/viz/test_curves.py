"""Training curves from log.jsonl: panels follow the keys present; clear errors for missing or empty logs."""

import json

import pytest
from PIL import Image

from udi.cli import main
from udi.viz.curves import figure_size_px, panels, read_log, write_curves


def test_run_log_gives_every_loss_term_and_schedule(tiny_run, capsys):
    assert main(["viz", "curves", str(tiny_run)]) == 0
    path = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["image"]
    layout = panels(read_log(tiny_run / "log.jsonl"))
    assert layout == [("loss terms", ["loss", "cls", "cls_plus", "patch"]), ("learning rate", ["lr"]),
                      ("weight decay", ["wd"]), ("teacher momentum", ["momentum"]),
                      ("teacher temperature", ["teacher_temp"]), ("images per second", ["images_per_sec"])]
    with Image.open(path) as im:
        assert path.endswith("curves.png") and im.size == figure_size_px(6)


def test_other_methods_logs_work(tmp_path):
    records = [{"iteration": i, "total_loss": 1.0 / (i + 1), "recon": 0.5, "lr": 0.1 * i, "note": "text",
                "failed_images": 0} for i in range(5)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"total_loss": 0.1, "rec')
    with pytest.warns(UserWarning, match="line 6 is not valid JSON"):
        assert panels(read_log(tmp_path / "log.jsonl")) == [
            ("loss terms", ["total_loss", "recon"]), ("learning rate", ["lr"])]
        path = write_curves(tmp_path, tmp_path / "out" / "c.png")
    with Image.open(path) as im:
        assert im.size == figure_size_px(2)


def test_failed_images_panel_appears_when_some_failed(tmp_path):
    records = [{"step": 1, "loss": 2.0, "failed_images": 0}, {"step": 2, "loss": 1.0, "failed_images": 3}]
    (tmp_path / "log.jsonl").write_text("\n".join(map(json.dumps, records)))
    assert [title for title, _ in panels(read_log(tmp_path / "log.jsonl"))] == ["loss terms", "undecodable images (total)"]


def test_missing_log_names_the_file(tmp_path, err_contains):
    assert main(["viz", "curves", str(tmp_path)]) == 2
    assert err_contains(f"{tmp_path / 'log.jsonl'} not found")


def test_log_without_numbers_names_the_file(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1, "epoch": 0, "note": "x"}\n')
    with pytest.raises(ValueError, match=r"log\.jsonl: the log has no numeric keys"):
        write_curves(tmp_path)


def test_quantities_of_another_size_get_their_own_panel(tmp_path):
    """Counts logged next to the losses (Bootleg's context_tokens) must not flatten the loss curves."""
    records = [{"step": i, "loss": 0.4 + 0.01 * i, "block0": 0.41, "context_tokens": 8.0, "relaxed": 0.0, "lr": 0.1}
               for i in range(1, 4)]
    (tmp_path / "log.jsonl").write_text("\n".join(map(json.dumps, records)))
    assert panels(read_log(tmp_path / "log.jsonl")) == [
        ("loss terms", ["loss", "block0"]), ("context_tokens", ["context_tokens"]), ("relaxed", ["relaxed"]),
        ("learning rate", ["lr"])]


def test_online_knn_keys_share_one_panel(tmp_path):
    records = [{"step": 1, "loss": 2.0, "lr": 0.1}, {"step": 2, "loss": 1.9, "lr": 0.1, "knn_cls": 20.0,
                                                     "knn_patch_mean": 31.0}, {"step": 3, "loss": 1.8, "lr": 0.1}]
    (tmp_path / "log.jsonl").write_text("\n".join(map(json.dumps, records)))
    assert panels(read_log(tmp_path / "log.jsonl")) == [
        ("loss terms", ["loss"]), ("online k-NN top-1 (%)", ["knn_cls", "knn_patch_mean"]), ("learning rate", ["lr"])]
    with Image.open(write_curves(tmp_path)) as im:
        assert im.size == figure_size_px(3)
