"""The Python API (udi.load / udi.pretrain / udi.evaluate) on tiny models and data."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import udi
from udi.cli import main
from udi.io.checkpoint import export_backbone
from udi.models.vit import build_vit

from .train.conftest import TINY


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    model = build_vit("vit_nano", patch_size=4, img_size=16, n_cls=2, depth=2).eval()
    path = tmp_path / "backbone.safetensors"
    export_backbone(path, model)
    return path


@pytest.fixture
def folder(tmp_path):
    """4 labelled PNGs of several sizes and modes in train/ and val/ (a folder `udi eval` takes)."""
    rng = np.random.default_rng(0)
    sizes = [(20, 30), (32, 32), (40, 18), (25, 25)]
    for split in ("train", "val"):
        for i, (h, w) in enumerate(sizes):
            (tmp_path / "data" / split / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
            array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            image = Image.fromarray(array) if i != 3 else Image.fromarray(array[..., 0])  # one grayscale
            image.save(tmp_path / "data" / split / f"c{i % 2}" / f"im{i}.png")
    return tmp_path / "data"


def test_import_is_cheap_and_has_a_version():
    code = "import sys, udi; print(udi.__version__, 'torch' in sys.modules, callable(udi.load))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [udi.__version__, "False", "True"]
    with pytest.raises(AttributeError):
        udi.no_such_thing


def test_load_transform_and_embed_shapes(weights, folder):
    backbone = udi.load(weights)
    assert backbone.image_size == 16 and backbone.embed_dim == 96 and backbone.n_cls == 2
    images = [Image.open(p) for p in sorted((folder / "val").rglob("*.png"))]
    x = backbone.transform(images[0])
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    batch = torch.stack([backbone.transform(im) for im in images])
    z = backbone.embed(images)
    assert z.shape == (4, 96)
    torch.testing.assert_close(backbone.embed(batch), z)  # a preprocessed batch: the same rows
    torch.testing.assert_close(backbone.embed(images, batch_size=3), z)
    assert backbone.embed(images, feature="cls_cat").shape == (4, 192)
    assert backbone.embed(images, feature="last2").shape == (4, 192)
    assert backbone.embed(images, feature="patch").shape == (4, 16, 96)
    with torch.no_grad():
        torch.testing.assert_close(backbone(batch), z)  # DINO's forward: [cls] (B, D)
        tokens = backbone.forward_features(batch)
        assert tokens.shape == (4, 2 + 16, 96)
        torch.testing.assert_close(tokens[:, 0], z)
        layers = backbone.get_intermediate_layers(batch, n=2)
        assert [t.shape for t in layers] == [(4, 18, 96)] * 2
        torch.testing.assert_close(layers[-1], tokens)
        assert [t.shape for t in backbone.get_intermediate_layers(batch, [0])] == [(4, 18, 96)]
        assert backbone.get_intermediate_layers(torch.zeros(1, 3, 32, 32), 1)[0].shape == (1, 2 + 64, 96)
    assert udi.load(weights, image_size=32).transform(images[0]).shape == (3, 32, 32)


def test_embeddings_equal_udi_embed_and_udi_eval_features(weights, folder, tmp_path, capsys):
    backbone = udi.load(weights)
    out = tmp_path / "emb.npy"
    assert main(["embed", "--no-progress", "--weights", str(weights), "--data", str(folder), "--split", "val",
                 "--out", str(out), "--num-workers", "0"]) == 0
    names = [json.loads(line) for line in (tmp_path / "emb.jsonl").read_text().splitlines()]
    from_pil = backbone.embed([Image.open(n) for n in names])
    np.testing.assert_allclose(from_pil.numpy(), np.load(out), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(backbone.embed(names), from_pil)  # paths: decoded as udi eval decodes files

    from udi.eval.features import extract_bank
    from udi.eval.suite import labelled_splits

    _, val = labelled_splits(str(folder), eval_size=16)  # as run_suite: crops cut from the full-resolution files
    bank, _ = extract_bank(backbone.vit, val, features=["cls", "patch_mean"], image_size=16, crop_fraction=0.875,
                           progress=False)
    paths = [str(p) for p, _ in val.samples]
    torch.testing.assert_close(backbone.embed(paths), bank["cls"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(backbone.embed(paths, "patch_mean"), bank["patch_mean"], atol=1e-6, rtol=1e-6)


def test_pretrain_with_dotted_keywords_and_a_dict(tmp_path):
    from udi.config import parse_overrides

    tiny = parse_overrides(TINY)  # {"train.batch_size": 8, ...}
    summary = udi.pretrain(None, tmp_path / "a", overrides=tiny, train__max_steps=1)
    assert summary["step"] == 1 and (tmp_path / "a" / "backbone.safetensors").is_file()
    nested = {"data": {"name": "scenes", "scenes_size": 16, "scenes_num_images": 96}}
    rest = {k: v for k, v in tiny.items() if not k.startswith("data.")}
    summary = udi.pretrain(nested, tmp_path / "b", overrides=rest, train__max_steps=1)
    assert summary["step"] == 1
    assert udi.load(tmp_path / "b").image_size == 16
    from udi.config import ConfigError

    with pytest.raises(ConfigError, match="unknown config key 'train.no_such_key'"):
        udi.pretrain(None, tmp_path / "c", train__no_such_key=1)


def test_evaluate_returns_the_metrics_dict(weights, tmp_path):
    results = udi.evaluate(weights, "digits", protocols=["knn"], out_dir=tmp_path / "eval", max_images=64)
    assert set(results["knn"]["cls"]) == {"knn_top1_k10", "knn_top1_k20", "knn_top1_k64"}  # k capped at 64 images
    assert results["source"]["weights"] == str(weights.resolve()) and results["source"]["data"] == "digits"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == results
    again = udi.evaluate(udi.load(weights), "digits", protocols=["knn"], max_images=64)
    assert again["knn"] == results["knn"]


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Python API)", "exec"), {})
    version, step, knn, source = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert version == udi.__version__ and step == "2" and 0 <= float(knn) <= 100
    assert source == str((tmp_path / "runs" / "api").resolve())
