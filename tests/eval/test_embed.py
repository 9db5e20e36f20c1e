"""udi embed: rows match a direct forward pass, memory-mapped output, image names, broken files, clear errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from udi.cli import main
from udi.data.augment import center_box, crop_resize, normalize
from udi.data.crops import CenterCropViews
from udi.data.datasets import build_dataset
from udi.eval import embed as embed_module
from udi.eval.embed import read_item_names
from udi.models.vit import build_vit
from udi.io.checkpoint import export_backbone


@pytest.fixture
def backbone_file(tmp_path):
    torch.manual_seed(0)
    backbone = build_vit("vit_nano", patch_size=4, img_size=16, n_cls=2).eval()
    path = tmp_path / "backbone.safetensors"
    export_backbone(path, backbone)
    return path, backbone


@pytest.fixture
def folder(tmp_path):
    """5 images of several sizes and modes, one in a subfolder."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i, (h, w) in enumerate([(20, 30), (32, 32), (40, 18), (25, 25), (64, 48)]):
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(array) if i != 3 else Image.fromarray(array[..., 0])  # one grayscale
        image.save(root / ("sub" if i == 4 else ".") / f"im{i}.png")
    return root


def direct(backbone, image, aspect, crop_fraction):
    """The evaluation transform and one forward pass, written out: (3, H, W) uint8 -> tokens (n_cls + N, D)."""
    box = center_box(torch.tensor([aspect]), crop_fraction)
    crop = normalize(crop_resize(image[None], box, backbone.img_size))
    with torch.no_grad():
        return backbone.forward_features(crop)[0]


def run_embed(capsys, *argv):
    assert main(["embed", "--no-progress", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("feature", ["cls", "cls+", "cls_cat", "patch_mean"])
def test_folder_rows_match_a_direct_forward_pass(backbone_file, folder, tmp_path, capsys, feature):
    path, backbone = backbone_file
    out = tmp_path / "emb.npy"
    result = run_embed(capsys, "--weights", path, "--data", folder, "--features", feature, "--out", out,
                       "--batch-size", 2, "--num-workers", 0)
    array = np.load(out, mmap_mode="r")
    names = read_item_names(tmp_path / "emb.jsonl")
    assert result["shape"] == list(array.shape) and array.dtype == np.float32
    assert len(names) == len(array) == 5 and names == sorted(names) and names[-1].endswith("sub/im4.png")
    for row, name in zip(array, names):
        crop = CenterCropViews(backbone.img_size, 0.875)(name)["image"]  # udi eval's: from the full-resolution file
        with torch.no_grad():
            tokens = backbone.forward_features(normalize(crop[None].float() / 255))[0]
        expected = {"cls": tokens[0], "cls+": tokens[1], "cls_cat": tokens[:2].flatten(),
                    "patch_mean": tokens[2:].mean(0)}[feature]
        np.testing.assert_allclose(row, expected.numpy(), atol=1e-5, rtol=1e-5)
    assert not list(tmp_path.glob(".*partial"))


def test_undecodable_files_get_no_row_and_are_named(backbone_file, folder, tmp_path, capsys):
    """Before: the next image took the broken file's place, so it had two rows ((7, D) for 6 good)."""
    for i in (1, 3):
        (folder / f"broken{i}.png").write_bytes(b"not an image")
    result = run_embed(capsys, "--weights", backbone_file[0], "--data", folder, "--out", tmp_path / "e.npy",
                       "--batch-size", 2, "--num-workers", 0)
    names = read_item_names(tmp_path / "e.jsonl")
    array = np.load(tmp_path / "e.npy")
    assert array.shape == (5, 96) and result["shape"] == [5, 96] and len(names) == len(set(names)) == 5
    assert sorted(result["skipped"]) == [str(folder / "broken1.png"), str(folder / "broken3.png")]
    clean = run_embed(capsys, "--weights", backbone_file[0], "--data", folder, "--out", tmp_path / "c.npy",
                      "--batch-size", 5, "--num-workers", 0)
    assert clean["skipped"] == result["skipped"]
    np.testing.assert_allclose(array, np.load(tmp_path / "c.npy"), atol=1e-6)  # rows do not depend on batching


def test_every_name_takes_one_line(backbone_file, tmp_path, capsys):
    root = tmp_path / "odd"
    root.mkdir()
    for name in ("two\nlines.png", "plain.png"):
        Image.new("RGB", (8, 8), (9, 9, 9)).save(root / name, format="PNG")
    run_embed(capsys, "--weights", backbone_file[0], "--data", root, "--out", tmp_path / "o.npy", "--num-workers", 0)
    assert read_item_names(tmp_path / "o.jsonl") == [str(root / "plain.png"), str(root / "two\nlines.png")]


def test_a_folder_of_broken_files_is_a_clear_error(backbone_file, tmp_path, err_contains):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    assert main(["embed", "--no-progress", "--weights", str(backbone_file[0]), "--data", str(root),
                 "--out", str(tmp_path / "b.npy"), "--num-workers", "0"]) == 2
    assert err_contains("none of the 1 images could be decoded")
    assert list(tmp_path.glob("b.*")) == [] and list(tmp_path.glob(".b.*")) == []


def test_builtin_patch_tokens_and_last_blocks(backbone_file, tmp_path, capsys):
    path, backbone = backbone_file
    patch = run_embed(capsys, "--weights", path, "--data", "digits", "--split", "val", "--features", "patch",
                      "--out", tmp_path / "patch", "--batch-size", 100)
    assert patch["array"].endswith("patch.npy") and patch["shape"] == [359, 16, 96]
    last2 = run_embed(capsys, "--weights", path, "--data", "digits", "--split", "val", "--features", "last2",
                      "--out", tmp_path / "last2.npy", "--dtype", "float16")
    dataset = build_dataset(name="digits", split="val")
    tokens, blocks = np.load(tmp_path / "patch.npy"), np.load(tmp_path / "last2.npy")
    assert blocks.shape == (359, 192) and blocks.dtype == np.float16
    names = read_item_names(tmp_path / "patch.jsonl")
    assert names[:2] == ["digits:val:0", "digits:val:1"] and len(names) == 359
    for i in (0, 150, 358):
        item = dataset[i]
        np.testing.assert_allclose(tokens[i], direct(backbone, item["image"], item["aspect"], 1.0)[2:].numpy(),
                                   atol=1e-5, rtol=1e-5)
        crop = normalize(crop_resize(item["image"][None], center_box(torch.tensor([1.0]), 1.0), 16))
        with torch.no_grad():
            hidden = backbone.forward_intermediates(crop, [2, 3])
            expected = torch.cat([backbone.norm(h[0, 0]) for h in hidden])
        np.testing.assert_allclose(blocks[i].astype(np.float32), expected.numpy(), atol=2e-3, rtol=2e-3)


def test_a_failure_mid_way_leaves_no_file(backbone_file, folder, tmp_path, monkeypatch):
    path, backbone = backbone_file
    calls = {"n": 0}
    real = embed_module.compute_features

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return real(*args)

    monkeypatch.setattr(embed_module, "compute_features", failing)
    dataset, name, crop = embed_module.embedding_dataset(str(folder))
    with pytest.raises(RuntimeError, match="device lost"):
        embed_module.embed_dataset(backbone, dataset, "cls", tmp_path / "e.npy", name, 16, crop, batch_size=2,
                                   progress=False)
    assert list(tmp_path.glob("e.*")) == [] and list(tmp_path.glob(".e.*")) == []


@pytest.mark.parametrize("argv, message", [
    (["--features", "clss"], "unknown feature 'clss' (choose from cls, cls+, cls_cat, patch_mean, patch, lastN)"),
    (["--features", "last9"], "feature 'last9': N must lie in 1..4"),
    (["--data", "/no/such/folder"], "data '/no/such/folder' is neither a built-in data set"),
    (["--weights", "/no/weights.safetensors"], "weights not found: /no/weights.safetensors"),
])
def test_errors_are_clear(backbone_file, tmp_path, err_contains, argv, message):
    options = {"--weights": str(backbone_file[0]), "--data": "digits", "--out": str(tmp_path / "x.npy")}
    options.update(zip(argv[::2], argv[1::2]))
    assert main(["embed", *[x for pair in options.items() for x in pair]]) == 2
    assert err_contains(message)
    assert not (tmp_path / "x.npy").exists()


def test_second_class_token_feature_needs_two(tmp_path, err_contains):
    path = tmp_path / "one.safetensors"
    export_backbone(path, build_vit("vit_nano", patch_size=4, img_size=16, n_cls=1))
    assert main(["embed", "--weights", str(path), "--data", "digits", "--features", "cls_cat",
                 "--out", str(tmp_path / "x")]) == 2
    assert err_contains("needs a second class token; this backbone has 1")


def test_shrinking_the_array_copies_chunk_by_chunk(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(14, dtype=np.float32).reshape(7, 2))
    embed_module._shrink(path, 5, chunk=2)
    np.testing.assert_array_equal(np.load(path), np.arange(10, dtype=np.float32).reshape(5, 2))
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]
