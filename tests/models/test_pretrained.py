"""Loading backbones (udi.models.pretrained): a run's checkpoint.pt, malformed and hostile files."""
import re

import pytest
import torch

from udi.config import load_config
from udi.io.checkpoint import save_checkpoint
from udi.models.pretrained import load_backbone
from udi.models.vit import build_vit
from udi.train.loop import Trainer

from ..train.conftest import TINY


@pytest.mark.parametrize("method, n_cls", [("udi", 2), ("dino", 1)])
def test_checkpoint_backbone_equals_the_exported_one(tmp_path, method, n_cls):
    trainer = Trainer(load_config(None, TINY + [f"method={method}"]), tmp_path)
    tmp_path.mkdir(exist_ok=True)
    trainer.save()
    from_checkpoint, exported = load_backbone(tmp_path / "checkpoint.pt"), load_backbone(tmp_path)
    assert from_checkpoint.n_cls == n_cls and from_checkpoint.pretrain_method == method
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(from_checkpoint(x), exported(x))


def test_run_checkpoint_without_a_teacher_backbone_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"teacher": {"head.last_layer.weight": torch.zeros(2, 2)}, "config": load_config(None, TINY)})
    with pytest.raises(ValueError, match="checkpoint.pt: the run checkpoint has no teacher backbone"):
        load_backbone(path)


def _malformed(tmp_path, kind):
    """A weights file of ``kind`` (what users point --weights at by mistake, or a hostile file)."""
    import json
    import os
    import struct

    from safetensors.torch import save_file

    path = tmp_path / f"{kind}{'.pth' if kind in ('random_pth', 'empty_pth', 'tensor', 'list') else '.safetensors'}"
    if kind in ("random", "random_pth"):
        path.write_bytes(os.urandom(1000))
    elif kind in ("empty", "empty_pth"):
        path.write_bytes(b"")
    elif kind == "truncated":
        save_file({"a": torch.zeros(10, 10)}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "huge_header":
        path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    elif kind == "bad_offsets":
        header = json.dumps({"a": {"dtype": "F32", "shape": [10, 10], "data_offsets": [0, 99999]}}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(400))
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "list":
        torch.save([1, 2], path)
    elif kind in ("enormous", "bad_arch_json"):
        model = build_vit("vit_nano", patch_size=4, img_size=16)
        arch = {**model.arch_config(), "embed_dim": 10**6, "depth": 10**4}
        text = json.dumps(arch) if kind == "enormous" else "{not json"
        save_file(model.state_dict(), path, metadata={"format": "udi.vit.v1", "arch": text})
    return path


@pytest.mark.parametrize("kind, message", [
    ("random", "not a readable .safetensors file"), ("empty", "not a readable .safetensors file"),
    ("truncated", "not a readable .safetensors file"), ("huge_header", "header too large"),
    ("bad_offsets", "not a readable .safetensors file"),
    ("random_pth", "not a PyTorch weights file, or a damaged one"), ("empty_pth", "not a PyTorch weights file"),
    ("tensor", "holds a Tensor, not a dict of weights"), ("list", "holds a list, not a dict of weights"),
    ("enormous", "its metadata says embed_dim=1000000 but the weights have 96"),
    ("bad_arch_json", "metadata 'arch' is not an architecture"),
])
def test_malformed_weights_are_one_clear_error(tmp_path, kind, message, capsys):
    """Before: tracebacks (SafetensorError, AttributeError, RuntimeError) or, for the enormous
    architecture, an attempt to allocate it."""
    from udi.cli import main

    path = _malformed(tmp_path, kind)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_backbone(path)
    assert main(["eval", "knn", "--weights", str(path), "--data", "digits"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_metadata_shapes_must_match_the_tensors(tmp_path):
    import json

    from safetensors.torch import save_file

    model = build_vit("vit_nano", patch_size=4, img_size=16)
    arch = {**model.arch_config(), "mlp_ratio": 2.0}  # same width, depth and tokens; other MLP shapes
    save_file(model.state_dict(), tmp_path / "m.safetensors", metadata={"format": "udi.vit.v1", "arch": json.dumps(arch)})
    with pytest.raises(ValueError, match="'blocks.0.mlp.fc1.weight' has shape"):
        load_backbone(tmp_path / "m.safetensors")
