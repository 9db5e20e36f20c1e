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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_run_files_get_the_users_umask(tmp_path, umask, mode):
    """Before: checkpoint.pt and backbone.safetensors kept mkstemp's 0600 through the rename."""
    from udi.config import load_config
    from udi.train.loop import pretrain

    from ..train.conftest import TINY

    previous = os.umask(umask)
    try:
        pretrain(load_config(None, TINY + ["train.max_steps=1"]), tmp_path / "run")
        atomic_write(tmp_path / "plain.bin", lambda tmp: open(tmp, "wb").close())
    finally:
        os.umask(previous)
    for name in ("checkpoint.pt", "backbone.safetensors"):
        assert oct((tmp_path / "run" / name).stat().st_mode & 0o777) == oct(mode), name
    assert oct((tmp_path / "plain.bin").stat().st_mode & 0o777) == oct(mode)


def test_any_random_bytes_are_not_a_weights_file(tmp_path):
    # The legacy unpickler fails on random bytes in many ways (UnpicklingError, EOFError, IndexError,
    # ...): each is the same one-line message (it once depended on the bytes drawn).
    import random

    from udi.io.checkpoint import load_checkpoint

    rng = random.Random(0)
    for i in range(60):
        path = tmp_path / f"random{i}.pth"
        path.write_bytes(bytes(rng.randrange(256) for _ in range(200)))
        with pytest.raises(ValueError, match="not a PyTorch weights file, or a damaged one"):
            load_checkpoint(path)
