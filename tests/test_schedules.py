import math

import pytest

from udi.schedules import cosine_schedule, scaled_lr, teacher_temperature


def test_cosine_with_warmup():
    assert cosine_schedule(0, 100, 1.0, 0.0, warmup_steps=10) == 0.0
    assert cosine_schedule(5, 100, 1.0, 0.0, warmup_steps=10) == pytest.approx(0.5)
    assert cosine_schedule(10, 100, 1.0, 0.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_schedule(55, 100, 1.0, 0.0, warmup_steps=10) == pytest.approx(0.5)  # halfway through the cosine
    assert cosine_schedule(100, 100, 1.0, 0.1, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_schedule(500, 100, 1.0, 0.1) == pytest.approx(0.1)


def test_ema_momentum_and_weight_decay_are_cosines():
    assert cosine_schedule(0, 1000, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(1000, 1000, 0.996, 1.0) == pytest.approx(1.0)
    quarter = 0.1 + 0.5 * (0.04 - 0.1) * (1 + math.cos(math.pi / 4))
    assert cosine_schedule(250, 1000, 0.04, 0.1) == pytest.approx(quarter)


def test_teacher_temperature_linspace_then_constant():
    assert teacher_temperature(0, 0.04, 0.07, 30) == pytest.approx(0.04)
    assert teacher_temperature(29, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temperature(15, 0.04, 0.07, 30) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert teacher_temperature(100, 0.04, 0.07, 30) == 0.07
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07


def test_linear_lr_scaling():
    assert scaled_lr(5e-4, 1024) == pytest.approx(2e-3)


def test_linear_ramp():
    from udi.schedules import linear_ramp

    assert [linear_ramp(e, 0.2, 1.0, 4) for e in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
