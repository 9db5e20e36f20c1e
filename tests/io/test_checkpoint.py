"""Atomic checkpoints, safe loading and the exported backbone (udi.io.checkpoint)."""
import os

import pytest
import torch
from torch import nn

from udi.io.checkpoint import atomic_write, export_backbone, load_checkpoint, save_checkpoint
from udi.models.pretrained import load_backbone
from udi.models.vit import build_vit


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    def torn_write(tmp):
        with open(tmp, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, torn_write)
    assert load_checkpoint(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind


def test_load_checkpoint_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": nn.Linear(1, 1)}, path)  # a module is not plain data
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_checkpoint(path)


def test_backbone_export_round_trip(tmp_path):
    model = build_vit("vit_nano", patch_size=4, img_size=16, n_cls=2).eval()
    export_backbone(tmp_path / "backbone.safetensors", model, {"method": "udi"})
    loaded = load_backbone(tmp_path)  # a run directory works too
    x = torch.randn(2, 3, 16, 16)
    assert loaded.n_cls == 2 and torch.equal(loaded(x), model(x))
    with pytest.raises(FileNotFoundError, match="weights not found"):
        load_backbone(tmp_path / "missing.pt")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="without backbone.safetensors"):
        load_backbone(tmp_path / "empty_run")


def test_conv_stem_backbone_records_its_stem(tmp_path):
    from udi.io.checkpoint import read_backbone_file
    import json

    model = build_vit("vit_nano", patch_size=8, img_size=32, stem="conv").eval()
    export_backbone(tmp_path / "backbone.safetensors", model, {"method": "dino"})
    _, metadata = read_backbone_file(tmp_path / "backbone.safetensors")
    assert json.loads(metadata["arch"])["stem"] == "conv"
    loaded = load_backbone(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    assert loaded.stem == "conv" and torch.equal(loaded(x), model(x))
