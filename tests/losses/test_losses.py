"""DINO and UDI losses against hand-computed cases and loop-based references."""

import math
from dataclasses import dataclass

import pytest
import torch

from udi.losses.dino import DINOLoss
from udi.losses.distill import update_center
from udi.losses.udi import StudentLogits, TeacherLogits, UDILoss


def softmax(xs, temp=1.0):
    exps = [math.exp(x / temp) for x in xs]
    return [e / sum(exps) for e in exps]


def cross_entropy(p, logits, temp):
    q = softmax(logits, temp)
    return -sum(pi * math.log(qi) for pi, qi in zip(p, q))


def test_dino_loss_hand_computed_two_views():
    # B = 1, two global views, K = 2, centre 0.
    t = [[1.0, 0.0], [0.0, 2.0]]
    s = [[0.5, -0.5], [0.2, 0.1]]
    loss = DINOLoss(out_dim=2, n_views=2, student_temp=0.1, center_momentum=0.9)
    value = loss(torch.tensor(s), torch.tensor(t), teacher_temp=0.04)
    expected = 0.5 * (cross_entropy(softmax(t[1], 0.04), s[0], 0.1) + cross_entropy(softmax(t[0], 0.04), s[1], 0.1))
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # centre <- 0.9 * 0 + 0.1 * mean of teacher rows
    assert loss.center[0].tolist() == pytest.approx([0.05, 0.1])


def local_mean(points, valid):
    """(..., Sl, K), (..., Sl) -> (..., K): what the teacher hands over for the local views, the
    valid-weighted mean of their per-point patch logits (zeros where none is valid)."""
    w = valid.float()
    return (w.unsqueeze(-1) * points).sum(-2) / w.sum(-1, keepdim=True).clamp(min=1.0)


def random_inputs(batch=3, n_local=2, sg=4, sl=3, k=5, seed=0):
    """student, teacher, valid_global, valid_local."""
    return random_inputs_with_points(batch, n_local, sg, sl, k, seed)[:4]


@dataclass
class PerPoint:
    """The per-point logits behind the networks' outputs, at every sampled point (valid or not)."""

    student: torch.Tensor  # (2, B, Sg, K) student patch logits
    teacher: torch.Tensor  # (2, B, Sg, K) teacher patch logits, [u] read on teacher view 1-u
    local: torch.Tensor  # (L, 2, B, Sl, K) teacher patch logits at the local views' points


def network_outputs(cls, cls_plus, t_cls, per_point, valid_global, valid_local):
    """What the networks hand the loss: the valid global points' rows and the valid means."""
    student = StudentLogits(cls=cls, cls_plus=cls_plus, patch=per_point.student[valid_global])
    teacher = TeacherLogits(cls=t_cls, patch_global=per_point.teacher[valid_global],
                            patch_local_mean=local_mean(per_point.local, valid_local))
    return student, teacher


def random_inputs_with_points(batch=3, n_local=2, sg=4, sl=3, k=5, seed=0):
    """``random_inputs`` and the ``PerPoint`` logits behind them."""
    g = torch.Generator().manual_seed(seed)
    views = 2 + n_local
    cls = torch.randn(views * batch, k, generator=g)
    cls_plus = torch.randn(views * batch, k, generator=g)
    s_patch = torch.randn(2, batch, sg, k, generator=g)
    t_cls = torch.randn(2 * batch, k, generator=g)
    per_point = PerPoint(student=s_patch, teacher=torch.randn(2, batch, sg, k, generator=g),
                         local=torch.randn(n_local, 2, batch, sl, k, generator=g))
    valid_global = torch.rand(2, batch, sg, generator=g) > 0.4
    valid_local = torch.rand(n_local, 2, batch, sl, generator=g) > 0.4
    valid_global[0, 0] = False  # an image with no valid point: [cls+] target falls back to [cls]
    if n_local:
        valid_local[0, 1, 0] = False  # the same for a local view against one teacher view
    student, teacher = network_outputs(cls, cls_plus, t_cls, per_point, valid_global, valid_local)
    return student, teacher, valid_global, valid_local, per_point


def test_udi_without_extra_token_and_patch_level_equals_dino():
    student, teacher, vg, vl = random_inputs()
    udi = UDILoss(out_dim=5, n_local=2, extra_token=False, patch_level=False)
    dino = DINOLoss(out_dim=5, n_views=4)
    for step in range(3):  # several steps: the centres must evolve identically too
        a = udi(student, teacher, None, None, teacher_temp=0.05)
        b = dino(student.cls, teacher.cls, teacher_temp=0.05)
        assert set(a) == {"cls", "loss"}
        assert a["loss"].item() == pytest.approx(b.item(), rel=1e-6)
        assert torch.allclose(udi.center_cls, dino.center)
        teacher.cls = teacher.cls + 0.3 * step


def reference_udi(student, teacher, per_point, vg, vl, n_local, alpha, temp_t, temp_s=0.1):
    """Direct loops over views, images and points (no vectorisation), centres all zero, on the
    per-point logits at every point (``PerPoint``), valid or not."""
    batch = teacher.cls.shape[0] // 2
    views = 2 + n_local
    t_cls = teacher.cls.view(2, batch, -1)
    s_cls = student.cls.view(views, batch, -1)
    s_plus = student.cls_plus.view(views, batch, -1)

    def h(t_logits, s_logits):
        return -(torch.softmax(t_logits / temp_t, -1) * torch.log_softmax(s_logits / temp_s, -1)).sum().item()

    def blend(patches, valid, cls):
        if not valid.any():
            return cls
        mean = sum(patches[i] for i in range(len(valid)) if valid[i]) / valid.sum()
        return alpha * mean + (1 - alpha) * cls

    levels = {"cls": [[], []], "cls_plus": [[], []]}
    for b in range(batch):
        for u in range(views):
            partners = [1 - u] if u < 2 else [0, 1]
            for v in partners:
                part = 0 if u < 2 else 1
                levels["cls"][part].append(h(t_cls[v, b], s_cls[u, b]))
                if u < 2:
                    target = blend(per_point.teacher[u, b], vg[u, b], t_cls[v, b])
                else:
                    target = blend(per_point.local[u - 2, v, b], vl[u - 2, v, b], t_cls[v, b])
                levels["cls_plus"][part].append(h(target, s_plus[u, b]))
    out = {}
    for name, (glob, loc) in levels.items():
        g, l = sum(glob) / len(glob), sum(loc) / len(loc)
        out[name] = (2 * g + 2 * n_local * l) / (2 + 2 * n_local)
    points = [
        h(per_point.teacher[u, b, i], per_point.student[u, b, i])
        for u in range(2) for b in range(batch) for i in range(vg.shape[2]) if vg[u, b, i]
    ]
    out["patch"] = sum(points) / len(points)  # mean over all valid points of the batch
    out["loss"] = (out["cls"] + out["cls_plus"] + out["patch"]) / 3
    return out


@pytest.mark.parametrize("alpha", [0.5, 0.0, 1.0])
def test_udi_terms_match_loop_reference(alpha):
    student, teacher, vg, vl, per_point = random_inputs_with_points()
    loss = UDILoss(out_dim=5, n_local=2, alpha=alpha)
    got = loss(student, teacher, vg, vl, teacher_temp=0.07)
    want = reference_udi(student, teacher, per_point, vg, vl, n_local=2, alpha=alpha, temp_t=0.07)
    for name in ("cls", "cls_plus", "patch", "loss"):
        assert got[name].item() == pytest.approx(want[name], rel=1e-5), name


def test_patch_centre_from_local_means_equals_centre_over_every_valid_point():
    # The teacher hands over only the local views' means; the patch centre must still be the
    # mean over every valid per-point row, global and local (count * mean = sum of the rows).
    student, teacher, vg, vl, per_point = random_inputs_with_points(k=64)
    loss = UDILoss(out_dim=64, n_local=2)
    loss.center_patch.normal_(generator=torch.Generator().manual_seed(1))
    expected = loss.center_patch.clone()
    update_center(expected, torch.cat([per_point.teacher.flatten(0, -2), per_point.local.flatten(0, -2)]), 0.9,
                  torch.cat([vg.flatten(), vl.flatten()]))
    loss(student, teacher, vg, vl, teacher_temp=0.07)
    torch.testing.assert_close(loss.center_patch, expected, rtol=1e-6, atol=1e-6)


def test_udi_cls_plus_hand_computed_blend():
    # B = 1, no locals, K = 2, Sg = 2. Student view 0's target comes from teacher view 1.
    valid = torch.tensor([[[True, False]], [[False, False]]])  # view 1: no valid point -> cls alone
    student = StudentLogits(cls=torch.zeros(2, 2), cls_plus=torch.tensor([[1.0, 0.0], [0.0, 0.0]]),
                            patch=torch.zeros(1, 2))  # the one valid point
    teacher = TeacherLogits(
        cls=torch.tensor([[0.0, 0.0], [2.0, 0.0]]),
        patch_global=torch.tensor([[0.0, 1.0]]),  # view 0's valid point ([9, 9] at its invalid one never arrives)
        patch_local_mean=None,
    )
    loss = UDILoss(out_dim=2, n_local=0, alpha=0.5)
    got = loss(student, teacher, valid, None, teacher_temp=1.0)
    # view 0: t+ = 0.5 * [0, 1] + 0.5 * T_cls(view 1) = [1.0, 0.5]; view 1: t+ = T_cls(view 0) = [0, 0]
    expected = 0.5 * (cross_entropy(softmax([1.0, 0.5]), [1.0, 0.0], 0.1) + cross_entropy(softmax([0, 0]), [0, 0], 0.1))
    assert got["cls_plus"].item() == pytest.approx(expected, rel=1e-5)
    # centre of cls+ over both blended targets: 0.1 * mean([1, .5], [0, 0])
    assert loss.center_cls_plus[0].tolist() == pytest.approx([0.05, 0.025])
    # centre of patches weighted by validity: only [0, 1] is valid
    assert loss.center_patch[0].tolist() == pytest.approx([0.0, 0.1])


def test_patch_level_averages_over_all_valid_points_of_batch():
    student, teacher, vg, vl, logits = random_inputs_with_points(batch=2, n_local=0)
    vg[:] = False
    vg[0, 0, :1] = True  # image 0: one valid point
    vg[0, 1, :] = True  # image 1: all four
    student, teacher = network_outputs(student.cls, student.cls_plus, teacher.cls, logits, vg, vl)
    loss = UDILoss(out_dim=5, n_local=0, extra_token=False)
    got = loss(student, teacher, vg, None, teacher_temp=0.07)["patch"]
    per_point = -(torch.softmax(logits.teacher / 0.07, -1) * torch.log_softmax(logits.student / 0.1, -1)).sum(-1)
    assert got.item() == pytest.approx(per_point[vg].mean().item(), rel=1e-6)
    per_image = (per_point[0, 0, :1].mean() + per_point[0, 1].mean()) / 2
    assert got.item() != pytest.approx(per_image.item(), rel=1e-3)


def test_centres_use_values_before_the_step_and_update_after():
    student, teacher, vg, vl = random_inputs()
    loss = UDILoss(out_dim=5, n_local=2)
    loss.center_cls.fill_(0.5)
    first = loss(student, teacher, vg, vl, teacher_temp=0.07)["cls"]
    fresh = UDILoss(out_dim=5, n_local=2)
    fresh.center_cls.fill_(0.5)  # a uniform shift of logits does not change the softmax ...
    assert first.item() == pytest.approx(fresh(student, teacher, vg, vl, teacher_temp=0.07)["cls"].item(), rel=1e-6)
    expected = 0.9 * 0.5 + 0.1 * teacher.cls.mean(0)
    assert torch.allclose(loss.center_cls[0], expected, atol=1e-6)


def test_update_center_weighted_and_empty():
    center = torch.zeros(1, 2)
    update_center(center, torch.tensor([[1.0, 2.0], [100.0, 100.0]]), 0.5, torch.tensor([1.0, 0.0]))
    assert center.tolist() == [[0.5, 1.0]]
    update_center(center, torch.tensor([[7.0, 7.0]]), 0.5, torch.tensor([0.0]))
    assert center.tolist() == [[0.5, 1.0]]  # no valid entry: unchanged


def test_update_center_rounds_as_the_in_place_update_did():
    """The update is chosen on the device now; its numbers are those of ``c.mul_(m).add_(mean, alpha=1-m)``."""
    g = torch.Generator().manual_seed(1)
    center, rows = torch.randn(1, 4099, generator=g), 5 * torch.randn(37, 4099, generator=g)
    weights = (torch.rand(37, generator=g) > 0.3).float()
    expected = center.clone().mul_(0.9).add_((weights @ rows / weights.sum())[None], alpha=0.1)
    update_center(center, rows, 0.9, weights)
    assert torch.equal(center, expected)


@pytest.mark.cuda
def test_update_center_does_not_wait_for_the_gpu():
    """No host-device synchronisation (the step goes on queueing work), with and without valid rows."""
    center = torch.zeros(1, 8, device="cuda")
    rows, weights = torch.randn(5, 8, device="cuda"), torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        update_center(center, rows, 0.5, weights)
        update_center(center, rows, 0.5, torch.zeros(5, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = 0.5 * (rows[0] + rows[2]) / 2
    torch.testing.assert_close(center[0], expected)


def test_update_center_of_parts_equals_update_of_their_concatenation():
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(3, 4, generator=g), torch.randn(0, 4), torch.randn(2, 4, generator=g)]
    weights = [torch.tensor([1.0, 0.0, 2.0]), torch.zeros(0), torch.tensor([3.0, 1.0])]
    by_parts, whole = torch.ones(1, 4), torch.ones(1, 4)
    update_center(by_parts, parts, 0.9, weights)
    update_center(whole, torch.cat(parts), 0.9, torch.cat(weights))
    torch.testing.assert_close(by_parts, whole)
    # [1, 0, 2] and [3, 1] weights: (1 * p0[0] + 2 * p0[2] + 3 * p2[0] + p2[1]) / 7
    mean = (parts[0][0] + 2 * parts[0][2] + 3 * parts[2][0] + parts[2][1]) / 7
    torch.testing.assert_close(by_parts[0], 0.9 + 0.1 * mean)
    unweighted = torch.zeros(1, 4)
    update_center(unweighted, parts, 0.5)
    torch.testing.assert_close(unweighted[0], 0.5 * torch.cat(parts).mean(0))
    with pytest.raises(ValueError, match="parts"):
        update_center(unweighted, parts, 0.5, weights[:2])


def test_udi_loss_backpropagates_to_every_student_output():
    student, teacher, vg, vl = random_inputs()
    for tensor in (student.cls, student.cls_plus, student.patch):
        tensor.requires_grad_(True)
    UDILoss(out_dim=5, n_local=2)(student, teacher, vg, vl, teacher_temp=0.07)["loss"].backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (student.cls, student.cls_plus, student.patch))
