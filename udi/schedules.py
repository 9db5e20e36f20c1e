"""Per-step schedules (DINO style): warm-up then cosine, and the teacher temperature.

Plain functions of the step or epoch, shared by the training loop (learning rate, weight
decay, EMA momentum) and the methods (teacher temperature).
"""

from __future__ import annotations

import math


def cosine_schedule(step: int, total_steps: int, base: float, final: float, warmup_steps: int = 0, warmup_start: float = 0.0) -> float:
    """Linear warm-up from ``warmup_start`` to ``base`` over ``warmup_steps``, then a cosine from
    ``base`` to ``final`` over the remaining steps; ``final`` after ``total_steps``."""
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def teacher_temperature(epoch: int, warmup_temp: float, temp: float, warmup_epochs: int) -> float:
    """``linspace(warmup_temp, temp, warmup_epochs)[epoch]``, then ``temp`` (0.07 reached at epoch 29 for 30)."""
    if epoch >= warmup_epochs:
        return temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (temp - warmup_temp) * epoch / (warmup_epochs - 1)


def linear_ramp(epoch: int, start: float, end: float, epochs: int) -> float:
    """``start`` at epoch 0, linearly to ``end`` at epoch ``epochs``, then ``end``."""
    return end if epoch >= epochs else start + (end - start) * epoch / epochs


def scaled_lr(lr_per_256: float, global_batch: int) -> float:
    """Linear scaling rule: ``lr * global_batch / 256``."""
    return lr_per_256 * global_batch / 256
