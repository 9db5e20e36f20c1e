"""Loading the teacher backbone of a run's checkpoint.pt (udi.models.pretrained)."""
import pytest
import torch

from udi.config import load_config
from udi.io.checkpoint import save_checkpoint
from udi.models.pretrained import load_backbone
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
