"""UDINetwork's student and teacher forwards: the heads skip the points that are not valid,
and the local crops' patch logits are averaged in the head's bottleneck (before the linear
last layer); checked against the per-point computation at every point that they replaced
(kept here as the references, ``reference_forward_teacher`` and ``reference_forward_student``)."""

import pytest
import torch

from udi.data.views import one_hot_selection
from udi.losses.distill import group_means, update_center
from udi.losses.udi import StudentLogits, TeacherLogits, UDILoss
from udi.methods import build_method
from udi.models.network import UDINetwork
from udi.models.vit import VisionTransformer

from ..methods.test_methods import method_cfg, tiny_batch

TOL = dict(rtol=1e-6, atol=1e-6)


@torch.no_grad()
def reference_forward_teacher(net, globals_, map_global, map_local):
    """The former path: the head (K-wide last layer included) on every sampled point of the
    global and the local views. Returns cls (2B, K), patch_global (2, B, Sg, K), patch_local
    (L, 2, B, Sl, K), [j, v] = at points of local j, read on teacher view v."""
    cls, patches = net._encode(globals_)
    n_local, sg = (map_local.shape[0] if map_local is not None else 0), map_global.shape[2]
    queries = [map_global.flip(0)]
    if n_local:
        queries.append(map_local.permute(1, 2, 0, 3, 4).flatten(2, 3))
    queries = torch.cat(queries, dim=2).flatten(0, 1)
    srs_out = net.srs(patches, queries)
    logits_cls, _, logits_patch = net._heads(cls[:, 0], None, srs_out.flatten(0, 1))
    logits_patch = logits_patch.unflatten(0, (2, -1, queries.shape[1]))
    patch_global = logits_patch[:, :, :sg].flip(0)
    patch_local = None
    if n_local:
        patch_local = logits_patch[:, :, sg:].unflatten(2, (n_local, -1)).permute(2, 0, 1, 3, 4)
    return logits_cls, patch_global, patch_local


def reference_forward_student(net, globals_, locals_, select_weights):
    """The former student path: the head on every sampled point of the global views, valid or
    not. Returns StudentLogits with ``patch`` (2, B, Sg, K)."""
    cls_g, patches_g = net._encode(globals_)
    cls_tokens = torch.cat([cls_g, net._encode(locals_)[0]])
    srs_out = net.srs(patches_g, select_weights.repeat(2, 1, 1))
    logits_cls, logits_plus, logits_patch = net._heads(cls_tokens[:, 0], cls_tokens[:, 1], srs_out.flatten(0, 1))
    return StudentLogits(cls=logits_cls, cls_plus=logits_plus, cls_features=cls_g[:, 0],
                         patch=logits_patch.unflatten(0, (2, -1, select_weights.shape[1])))


def reference_mean(logits, valid):
    """The former loss's average of per-point logits: sum_i w_i T_i / max(sum_i w_i, 1)."""
    w = valid.float()
    return (w.unsqueeze(-1) * logits).sum(-2) / w.sum(-1, keepdim=True).clamp(min=1.0)


def random_maps(batch, n_local, sg, sl, n_patches, seed=0):
    """Bilinear-like maps (non-negative rows summing to 1, zero rows where invalid)."""
    g = torch.Generator().manual_seed(seed)

    def rows(*shape):
        valid = torch.rand(*shape, generator=g) > 0.3
        m = torch.rand(*shape, n_patches, generator=g) * (torch.rand(*shape, n_patches, generator=g) > 0.8)
        m[..., 0] += 1e-3
        m = m / m.sum(-1, keepdim=True) * valid[..., None]
        return m, valid

    map_global, valid_global = rows(2, batch, sg)
    map_local, valid_local = rows(n_local, 2, batch, sl)
    valid_global[1, 0] = False  # a (student view, image) with no valid point
    map_global[1, 0] = 0.0
    if n_local:  # a (local, teacher view, image) with no valid point
        valid_local[0, 1, 0] = False
        map_local[0, 1, 0] = 0.0
    return map_global, valid_global, map_local, valid_local


def tiny_network(shared_head, out_dim=512):
    torch.manual_seed(0)
    backbone = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, n_cls=2)
    net = UDINetwork(backbone, dict(out_dim=out_dim, hidden_dim=64, bottleneck_dim=16, norm_last_layer=False),
                     extra_token=True, srs=True, shared_head=shared_head)
    with torch.no_grad():  # non-trivial row norms of the last layers
        for head in (net.head, net.head_patch):
            if head is not None:
                head.last_layer.weight_g.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("shared_head", [True, False])
@pytest.mark.parametrize("n_local", [0, 3])
def test_teacher_local_means_equal_mean_of_per_point_logits(shared_head, n_local):
    batch, sg, sl = 3, 5, 4
    net = tiny_network(shared_head)
    globals_ = torch.randn(2 * batch, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    map_global, valid_global, map_local, valid_local = random_maps(batch, n_local, sg, sl, 16)
    if not n_local:
        map_local = valid_local = None
    ref_cls, ref_global, ref_local = reference_forward_teacher(net, globals_, map_global, map_local)
    with torch.no_grad():
        out = net.forward_teacher(globals_, map_global, valid_global, map_local, valid_local)
    torch.testing.assert_close(out.cls, ref_cls, **TOL)
    assert 0 < len(out.patch_global) < valid_global.numel()
    torch.testing.assert_close(out.patch_global, ref_global[valid_global], **TOL)  # the valid points' rows
    global_mean = group_means(out.patch_global, valid_global)  # what the loss takes of these rows
    assert global_mean.shape == (2, batch, 512)
    torch.testing.assert_close(global_mean, reference_mean(ref_global, valid_global), **TOL)
    assert (global_mean[1, 0] == 0).all()
    if not n_local:
        assert out.patch_local_mean is None
        return
    assert out.patch_local_mean.shape == (n_local, 2, batch, 512)
    torch.testing.assert_close(out.patch_local_mean, reference_mean(ref_local, valid_local), **TOL)
    assert (out.patch_local_mean[0, 1, 0] == 0).all()  # no valid point: zeros (the loss falls back to [cls])


def test_networks_need_validity_with_their_maps():
    net = tiny_network(True, out_dim=8)
    map_global, valid_global, map_local, _ = random_maps(1, 1, 2, 2, 16)
    globals_ = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="valid_global"):
        net.forward_teacher(globals_, map_global)
    with pytest.raises(ValueError, match="valid_local"):
        net.forward_teacher(globals_, map_global, valid_global, map_local)
    with pytest.raises(ValueError, match="valid_global"):
        net.forward_student(globals_, None, torch.eye(16)[:2].unsqueeze(0))


def test_student_patch_rows_are_the_valid_points_of_the_full_computation():
    net = tiny_network(True)
    g = torch.Generator().manual_seed(3)
    globals_, locals_ = torch.randn(4, 3, 16, 16, generator=g), torch.randn(6, 3, 8, 8, generator=g)
    select = torch.eye(16)[torch.randperm(16, generator=g)[:5]].expand(2, 5, 16)  # (B, Sg, Ng) one-hot
    valid = torch.rand(2, 2, 5, generator=g) > 0.4
    valid[0, 1] = False
    with torch.no_grad():
        out = net.forward_student(globals_, locals_, select, valid)
        ref = reference_forward_student(net, globals_, locals_, select)
    assert 0 < len(out.patch) == valid.sum() < valid.numel()
    torch.testing.assert_close(out.patch, ref.patch[valid], **TOL)
    for name in ("cls", "cls_plus", "cls_features"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), **TOL)


def reference_loss_terms(method, student, teacher, loss_fn, views, temp):
    """The step as it was: per-point teacher and student logits at every point, valid or not,
    the teacher's means taken in logit space, and the patch centre over every valid per-point
    row (global and local)."""
    t_cls, t_global, t_local = reference_forward_teacher(teacher, views.globals_, views.map_global, views.map_local)
    center_patch = loss_fn.center_patch.clone()
    valid = views.valid_global
    teacher_out = TeacherLogits(cls=t_cls, patch_global=t_global[valid],
                                patch_local_mean=reference_mean(t_local, views.valid_local))
    select = one_hot_selection(views.select_global, method.spec.global_grid)
    student_out = reference_forward_student(student, views.globals_, views.locals_, select)
    student_out.patch = student_out.patch[valid]  # the loss reads the valid points' rows
    terms = loss_fn(student_out, teacher_out, views.valid_global, views.valid_local, temp)
    rows = torch.cat([t_global.flatten(0, -2), t_local.flatten(0, -2)])
    update_center(center_patch, rows, loss_fn.center_momentum,
                  torch.cat([views.valid_global.flatten(), views.valid_local.flatten()]))
    return terms, center_patch


def test_training_step_loss_gradients_and_centres_unchanged():
    cfg = method_cfg("udi", "head.out_dim=2048", "head.norm_last_layer=false")
    method = build_method(cfg)
    torch.manual_seed(0)
    student = method.build_student()
    teacher = method.build_teacher(student)
    with torch.no_grad():  # a teacher that differs from the student, as after some EMA steps
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    schedules = method.schedules(epoch=0)
    views = method.make_inputs(tiny_batch(cfg, size=6), torch.device("cpu"), torch.Generator().manual_seed(0),
                               schedules)
    assert views.valid_local.any() and not views.valid_local.all()
    assert views.valid_global.any() and not views.valid_global.all()  # the heads skip some points

    results = []
    for path in ("new", "reference"):
        loss_fn = method.build_loss(student)
        for name in ("center_cls", "center_cls_plus", "center_patch"):
            getattr(loss_fn, name).normal_(0, 0.1, generator=torch.Generator().manual_seed(5))
        student.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the same stochastic depth draws in both passes
        if path == "new":
            terms = method.loss_terms(student, teacher, loss_fn, views, schedules)
            center_patch = loss_fn.center_patch
        else:
            terms, center_patch = reference_loss_terms(method, student, teacher, loss_fn, views,
                                                       schedules["teacher_temp"])
        terms["loss"].backward()
        grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
        results.append((terms, grads, loss_fn, center_patch))

    (new, new_grads, new_fn, new_cp), (ref, ref_grads, ref_fn, ref_cp) = results
    assert set(new) == set(ref) == {"loss", "cls", "cls_plus", "patch"}
    for name in new:
        torch.testing.assert_close(new[name], ref[name], **TOL)
    assert new_grads.keys() == ref_grads.keys() and len(new_grads) > 0
    for name, grad in new_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(new_fn.center_cls, ref_fn.center_cls, **TOL)
    torch.testing.assert_close(new_fn.center_cls_plus, ref_fn.center_cls_plus, **TOL)
    torch.testing.assert_close(new_cp, ref_cp, **TOL)


def test_head_state_dict_keys_unchanged():
    net = tiny_network(False, out_dim=8)
    head_keys = ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
                 "mlp.4.weight", "mlp.4.bias", "last_layer.weight_g", "last_layer.weight_v"]
    keys = list(net.state_dict())
    for prefix in ("head.", "head_patch.", "head_plus."):
        assert [k[len(prefix):] for k in keys if k.startswith(prefix)] == head_keys


def test_no_valid_point_anywhere_gives_empty_rows_and_a_finite_loss():
    net = tiny_network(True)
    map_global, valid_global, map_local, valid_local = random_maps(2, 3, 5, 4, 16)
    for maps, valid in ((map_global, valid_global), (map_local, valid_local)):
        maps.zero_()
        valid.zero_()
    globals_ = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        teacher = net.forward_teacher(globals_, map_global, valid_global, map_local, valid_local)
    assert teacher.patch_global.shape == (0, 512)
    assert (group_means(teacher.patch_global, valid_global) == 0).all() and (teacher.patch_local_mean == 0).all()
    student = net.train().forward_student(globals_, torch.randn(6, 3, 8, 8), torch.eye(16)[:5].expand(2, 5, 16),
                                          valid_global)
    assert student.patch.shape == (0, 512)
    terms = UDILoss(512, n_local=3)(student, teacher, valid_global, valid_local, teacher_temp=0.07)
    assert terms["patch"].item() == 0 and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert net.head.last_layer.weight_v.grad.abs().sum() > 0
