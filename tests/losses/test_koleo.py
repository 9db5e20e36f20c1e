"""KoLeo regulariser (udi.losses.koleo) and its place in the UDI/DINO step (loss.koleo_weight)."""
import math

import pytest
import torch

from udi.losses.koleo import koleo_loss


def test_hand_computed_case():
    # Unit vectors at 0, 90 and 180 degrees: nearest distances sqrt(2), sqrt(2), sqrt(2).
    x = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]])  # scale does not matter: rows are normalised
    assert koleo_loss(x).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)
    # 0, 10 and 180 degrees: the close pair decides for two rows.
    a = math.radians(10)
    y = torch.tensor([[1.0, 0.0], [math.cos(a), math.sin(a)], [-1.0, 0.0]])
    close, far = 2 * math.sin(a / 2), 2 * math.cos(a / 2)
    expected = -(2 * math.log(close) + math.log(far)) / 3
    assert koleo_loss(y).item() == pytest.approx(expected, abs=1e-5)


def test_gradient_pushes_the_closest_pair_apart():
    x = torch.tensor([[1.0, 0.0], [0.99, 0.14], [-1.0, 0.05]], requires_grad=True)
    before = torch.nn.functional.normalize(x.detach(), dim=1)
    koleo_loss(x).backward()
    with torch.no_grad():
        after = torch.nn.functional.normalize(x - 0.01 * x.grad, dim=1)
    assert (after[0] - after[1]).norm() > (before[0] - before[1]).norm()


def test_needs_two_rows():
    with pytest.raises(ValueError, match="at least 2 rows"):
        koleo_loss(torch.randn(1, 4))


def test_udi_step_adds_the_weighted_term():
    from udi.config import load_config
    from udi.data.datasets import build_dataset
    from udi.methods import build_method
    from torch.utils.data import default_collate

    from ..train.conftest import TINY

    def terms(weight):
        cfg = load_config(None, TINY + [f"loss.koleo_weight={weight}"])
        method = build_method(cfg)
        torch.manual_seed(0)
        student = method.build_student()
        teacher, loss_fn = method.build_teacher(student), method.build_loss(student)
        dataset = build_dataset(name="scenes", scenes_size=16, scenes_num_images=8)
        batch = default_collate([dataset[i] for i in range(4)])
        sched = method.schedules(0)
        inputs = method.make_inputs(batch, torch.device("cpu"), torch.Generator().manual_seed(0), sched)
        return method.log_terms(loss_fn), method.loss_terms(student, teacher, loss_fn, inputs, sched)

    names_off, off = terms(0.0)
    names_on, on = terms(0.5)
    assert "koleo" not in off and "koleo" not in names_off and names_on[-1] == "koleo"
    assert torch.isfinite(on["koleo"])
    torch.testing.assert_close(on["loss"], off["loss"] + 0.5 * on["koleo"])
