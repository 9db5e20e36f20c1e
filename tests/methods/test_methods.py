"""The Method interface (udi.methods): the registry, and the contract every method keeps
with the training loop, checked for each registered method on one tiny batch."""

import pytest
import torch
from torch.utils.data import default_collate

from udi.config import CHOICES, ConfigError, load_config
from udi.data.datasets import build_dataset
from udi.methods import METHODS, build_method, build_network
from udi.methods.bootleg import BootlegMethod
from udi.methods.udi import TERMS, UDIMethod
from udi.models.bootleg_network import BootlegNetwork
from udi.models.network import UDINetwork

from ..train.conftest import TINY

EXTRA = {"bootleg": ["bootleg.min_context=2", "bootleg.predictor_depth=2"]}


def method_cfg(name, *extra):
    return load_config(None, TINY + [f"method={name}", *EXTRA.get(name, []), *extra])


def tiny_batch(cfg, size=4):
    data = cfg["data"]
    dataset = build_dataset(name=data["name"], scenes_size=data["scenes_size"],
                            scenes_num_images=data["scenes_num_images"], seed=0)
    return default_collate([dataset[i] for i in range(size)])


def test_registry_covers_every_config_choice():
    assert set(METHODS) == set(CHOICES["method"])
    assert isinstance(build_method(method_cfg("udi")), UDIMethod)
    assert isinstance(build_method(method_cfg("dino")), UDIMethod)
    assert isinstance(build_method(method_cfg("bootleg")), BootlegMethod)


def test_unknown_method_names_the_key():
    cfg = method_cfg("udi")
    cfg["method"] = "mae"
    with pytest.raises(ConfigError, match="'method' must be one of .*'mae'"):
        build_method(cfg)


def test_dino_is_udi_without_the_extra_levels():
    cfg = method_cfg("dino", "udi.extra_token=true", "udi.patch_level=true")  # udi.* is ignored by DINO
    method = build_method(cfg)
    assert (method.extra_token, method.patch_level) == (False, False)
    student = method.build_student()
    assert isinstance(student, UDINetwork) and student.backbone.n_cls == 1 and student.srs is None
    loss = method.build_loss(student)
    assert not loss.extra_token and not loss.patch_level
    udi = build_method(method_cfg("udi", "udi.patch_level=false"))
    assert (udi.extra_token, udi.patch_level) == (True, False)
    assert udi.find_unused_parameters(udi.build_student())  # the student SRS serves the patch level only
    assert not build_method(method_cfg("udi")).find_unused_parameters(build_method(method_cfg("udi")).build_student())


def test_build_network_is_the_students_initial_weights():
    for name in METHODS:
        cfg = method_cfg(name)
        torch.manual_seed(3)
        a = build_network(cfg)
        torch.manual_seed(3)
        b = build_method(cfg).build_student()
        assert a.state_dict().keys() == b.state_dict().keys()
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items()), name


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name):
    cfg = method_cfg(name)
    method = build_method(cfg)
    assert method.name == name and method.backbone_metadata() == {"method": name}

    torch.manual_seed(0)
    student = method.build_student()
    teacher = method.build_teacher(student)
    loss_fn = method.build_loss(student)
    # The teacher starts equal to the student where the EMA links them, frozen and in eval mode.
    target, source = method.ema_modules(teacher, student)
    pairs = list(zip(target.parameters(), source.parameters()))
    assert pairs and len(pairs) == len(list(source.parameters()))
    assert all(t.shape == s.shape and torch.equal(t, s) and t is not s for t, s in pairs)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.backbone.n_cls == student.backbone.n_cls

    terms_names = method.log_terms(loss_fn)
    assert terms_names[0] == "loss"
    schedules = method.schedules(epoch=0)
    inputs = method.make_inputs(tiny_batch(cfg), torch.device("cpu"), torch.Generator().manual_seed(0), schedules)
    terms = method.loss_terms(student, teacher, loss_fn, inputs, schedules)
    assert set(terms_names) >= {"loss"} and all(n in terms for n in terms_names if n not in ("cls_plus", "patch"))
    assert all(terms[n].ndim == 0 and torch.isfinite(terms[n]) for n in terms_names if n in terms)
    terms["loss"].backward()
    assert student.backbone.patch_embed.proj.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())  # no gradient reaches the teacher


def test_each_method_declares_its_own_schedules_and_terms():
    udi = build_method(method_cfg("udi"))
    assert set(udi.schedules(0)) == {"teacher_temp"} and udi.log_terms(None) == TERMS
    assert udi.schedules(0)["teacher_temp"] == pytest.approx(udi.cfg["loss"]["warmup_teacher_temp"])
    boot = build_method(method_cfg("bootleg"))
    student = boot.build_student()
    assert isinstance(student, BootlegNetwork) and boot.schedules(0) == {}  # Bootleg has no temperature
    assert boot.log_terms(boot.build_loss(student)) == ("loss", "block0", "block1", "block2", "block3",
                                                        "context_tokens", "relaxed")
    target, source = boot.ema_modules(boot.build_teacher(student), student)
    assert target.__class__.__name__ == "VisionTransformer" and source is student.backbone  # encoder alone


def test_photometric_ramp_schedule_reaches_the_full_recipe():
    ramped = build_method(method_cfg("udi", "views.photometric_ramp_epochs=4", "views.photometric_ramp_start=0.2"))
    assert ramped.schedules(0)["photometric_strength"] == pytest.approx(0.2)
    assert ramped.schedules(2)["photometric_strength"] == pytest.approx(0.6)
    plain = build_method(method_cfg("udi"))
    assert "photometric_strength" not in plain.schedules(0)
    batch = tiny_batch(plain.cfg)
    views = [m.make_inputs(batch, torch.device("cpu"), torch.Generator().manual_seed(1), m.schedules(epoch))
             for m, epoch in ((ramped, 5), (plain, 5), (ramped, 0))]
    assert torch.equal(views[0].globals_, views[1].globals_)  # past the ramp: the full recipe
    assert not torch.equal(views[2].globals_, views[1].globals_)  # during it: weaker colour changes
