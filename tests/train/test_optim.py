"""AdamW parameter groups, the EMA update, freezing the last layer (udi.train.optim)."""
import torch
from torch import nn

from udi.models.vit import build_vit
from udi.train.optim import build_optimizer, cancel_last_layer_grads, ema_update, param_groups, set_lr_wd


def test_weight_decay_only_on_rank_two_or_more():
    model = build_vit("vit_nano", patch_size=4, img_size=16)
    decay, no_decay = param_groups(model)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    optimizer = build_optimizer(model)
    set_lr_wd(optimizer, 0.1, 0.05)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert all(g["lr"] == 0.1 for g in optimizer.param_groups)


def test_ema_update():
    teacher, student = nn.Linear(2, 2), nn.Linear(2, 2)
    expected = [0.9 * t + 0.1 * s for t, s in zip(teacher.parameters(), student.parameters())]
    ema_update(teacher, student, 0.9)
    assert all(torch.allclose(a, b) for a, b in zip(teacher.parameters(), expected))


def test_cancel_last_layer_grads():
    model = nn.ModuleDict({"last_layer": nn.Linear(2, 2), "mlp": nn.Linear(2, 2)})
    sum(m(torch.ones(1, 2)).sum() for m in model.values()).backward()
    cancel_last_layer_grads(model)
    assert model["last_layer"].weight.grad is None and model["mlp"].weight.grad is not None
