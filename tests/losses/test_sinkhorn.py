"""Sinkhorn-Knopp teacher targets (``loss.centering=sinkhorn``) against hand-computed cases."""

import math

import pytest
import torch

from udi.losses.dino import DINOLoss
from udi.losses.distill import sinkhorn_probs
from udi.losses.udi import UDILoss

from .test_losses import random_inputs


def test_balanced_input_is_the_softmax():
    # Each prototype already gets half of the mass: Sinkhorn changes nothing.
    got = sinkhorn_probs(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), teacher_temp=1.0, iters=3)
    e = math.e
    assert got.tolist() == [pytest.approx([e / (1 + e), 1 / (1 + e)]), pytest.approx([1 / (1 + e), e / (1 + e)])]


def test_identical_rows_are_spread_evenly():
    # Both rows prefer prototype 0; balance leaves each prototype one row's worth of mass.
    # By hand: exp -> [[e, 1], [e, 1]]; columns / (mass * K) -> all 1/4; rows / (sum * R) -> all 1/4; x R.
    got = sinkhorn_probs(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), teacher_temp=1.0, iters=1)
    assert torch.allclose(got, torch.full((2, 2), 0.5))


def test_rows_are_distributions_and_prototypes_balance():
    logits = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * 3
    for iters in (1, 3):
        got = sinkhorn_probs(logits, teacher_temp=0.1, iters=iters)
        assert torch.allclose(got.sum(1), torch.ones(64), atol=1e-5)
    balanced = sinkhorn_probs(logits, teacher_temp=0.1, iters=200)
    assert torch.allclose(balanced.sum(0), torch.full((8,), 64 / 8), atol=1e-3)
    # The softmax of the same logits is far from balanced: Sinkhorn did the balancing.
    assert (torch.softmax(logits / 0.1, 1).sum(0) - 8).abs().max() > 1


def test_invalid_rows_take_no_part():
    logits = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    valid = torch.tensor([True, False] * 5)
    logits_with_junk = logits.clone()
    logits_with_junk[~valid] = 1e6  # would dominate the balance if it took part
    got = sinkhorn_probs(logits_with_junk, 0.2, iters=3, weights=valid.float())
    assert torch.equal(got[~valid], torch.zeros(5, 4))
    assert torch.allclose(got[valid], sinkhorn_probs(logits[valid], 0.2, iters=3), atol=1e-6)


def test_large_logits_and_sharp_temperature_stay_finite():
    logits = torch.tensor([[500.0, -500.0, 0.0], [-300.0, 800.0, 1.0], [0.0, 0.0, 0.0]])
    got = sinkhorn_probs(logits, teacher_temp=0.01, iters=3)
    assert torch.isfinite(got).all()
    assert torch.allclose(got.sum(1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("centering", ["center", "sinkhorn"])
def test_udi_without_extra_token_and_patch_level_equals_dino(centering):
    student, teacher, _, _ = random_inputs()
    udi = UDILoss(out_dim=5, n_local=2, extra_token=False, patch_level=False, centering=centering)
    dino = DINOLoss(out_dim=5, n_views=4, centering=centering)
    for step in range(3):
        a = udi(student, teacher, None, None, teacher_temp=0.05)
        b = dino(student.cls, teacher.cls, teacher_temp=0.05)
        assert a["loss"].item() == pytest.approx(b.item(), rel=1e-6)
        teacher.cls = teacher.cls + 0.3 * step
    moved = not torch.equal(udi.center_cls, torch.zeros_like(udi.center_cls))
    assert moved == (centering == "center")  # Sinkhorn leaves the centres alone


def test_udi_sinkhorn_levels_balance_their_own_rows():
    student, teacher, vg, vl = random_inputs(batch=4, k=6)
    loss = UDILoss(out_dim=6, n_local=2, centering="sinkhorn", sinkhorn_iters=3)
    got = loss(student, teacher, vg, vl, teacher_temp=0.07)
    # cls level: the 2B teacher rows balanced together; student view u < 2 against teacher view 1 - u.
    probs = sinkhorn_probs(teacher.cls, 0.07, 3).view(2, 4, 6)
    log_s = torch.log_softmax(student.cls.view(4, 4, 6) / 0.1, -1)
    global_part = -(probs.flip(0) * log_s[:2]).sum(-1).mean()
    local_part = -(probs.unsqueeze(0) * log_s[2:].unsqueeze(1)).sum(-1).mean()
    assert got["cls"].item() == pytest.approx(((2 * global_part + 4 * local_part) / 6).item(), rel=1e-5)
    # patch level: only the valid points take part in the balance and in the mean.
    patch_probs = sinkhorn_probs(teacher.patch_global, 0.07, 3)  # (P, K): the valid points' rows
    ce = -(patch_probs * torch.log_softmax(student.patch / 0.1, -1)).sum(-1)
    assert got["patch"].item() == pytest.approx(ce.mean().item(), rel=1e-5)
    assert torch.isfinite(got["cls_plus"])


def test_unknown_centering_is_refused():
    with pytest.raises(ValueError, match="centering"):
        UDILoss(out_dim=4, n_local=0, centering="mean")
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(out_dim=4, n_views=2, centering="mean")
