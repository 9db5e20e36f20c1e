"""Training on a CUDA device: the same step as on the CPU, mixed precision, resume (marked cuda:
skipped without a GPU; benchmarks/gpu_check.sh runs them)."""

import math

import pytest
import torch

from udi.train.loop import Trainer, pretrain

from .test_pretrain_e2e import read_log

pytestmark = pytest.mark.cuda

# No drop path: its masks come from the device's own generator, which differs between CPU and CUDA.
SAME = ("model.drop_path_rate=0.0",)


@pytest.fixture
def exact_cuda():
    """fp32 convolutions and matrix products on the GPU (no TF32), for comparisons with the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def batch_of(trainer: Trainer) -> dict:
    return torch.utils.data.default_collate([trainer.dataset[i] for i in range(trainer.cfg["train"]["batch_size"])])


@pytest.mark.parametrize("method", ["udi", "dino"])
def test_training_steps_on_cuda_match_the_cpu(tmp_path, tiny_cfg, exact_cuda, method):
    trainers = {d: Trainer(tiny_cfg(f"method={method}", f"train.device={d}", *SAME), tmp_path / d) for d in ("cpu", "cuda")}
    assert trainers["cuda"].device.type == "cuda"
    for name, value in trainers["cpu"].student.state_dict().items():  # the same initial weights
        assert torch.equal(value, trainers["cuda"].student.state_dict()[name].cpu()), name
    batch = batch_of(trainers["cpu"])
    for step in range(3):
        terms = {d: t.train_step(batch, epoch=1) for d, t in trainers.items()}
        for name in terms["cpu"]:  # the loss terms and the schedules
            assert terms["cuda"][name] == pytest.approx(terms["cpu"][name], rel=1e-4, abs=1e-5), (step, name)
    student = {d: t.student.state_dict() for d, t in trainers.items()}
    for name, value in student["cpu"].items():
        assert torch.allclose(student["cuda"][name].cpu(), value, rtol=1e-3, atol=1e-5), name


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_on_cuda_are_finite(tmp_path, tiny_cfg, precision):
    trainer = Trainer(tiny_cfg(f"train.precision={precision}", "train.device=cuda", "train.max_steps=3"), tmp_path)
    summary = trainer.run()
    assert summary["step"] == 3 and all(math.isfinite(summary[k]) for k in ("loss", "cls", "cls_plus", "patch"))
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    # Autocast computes in half precision; the weights (and the teacher's EMA) stay fp32.
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in trainer.student.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.teacher.parameters())


def test_pretrain_on_cuda_resumes_like_an_uninterrupted_run(tmp_path, tiny_cfg):
    # 96 images / 8 per batch: 12 steps per epoch; stopped at 4, resumed to 10. CUDA kernels that
    # accumulate with atomics (index and interpolation backward) need not be bitwise repeatable,
    # so the weights are compared closely rather than exactly (a step too many or too few moves
    # them by about the learning rate, ~1e-5 here, far outside the tolerance); the schedules exactly.
    full, parts = tmp_path / "full", tmp_path / "parts"
    # No TensorBoard: the GPU machine has no package index to install it from (gpu_check.sh).
    cfg = lambda steps: tiny_cfg("train.device=cuda", f"train.max_steps={steps}", "train.tensorboard=false")  # noqa: E731
    pretrain(cfg(10), full)
    pretrain(cfg(4), parts)
    pretrain(cfg(10), parts)
    a = torch.load(full / "checkpoint.pt", weights_only=True, map_location="cpu")
    b = torch.load(parts / "checkpoint.pt", weights_only=True, map_location="cpu")
    assert a["step"] == b["step"] == 10
    for part in ("student", "teacher", "loss"):
        for key, value in a[part].items():
            assert torch.allclose(value.float(), b[part][key].float(), rtol=1e-5, atol=1e-6), f"{part}.{key}"
    log_a, log_b = read_log(full), read_log(parts)
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b] == list(range(1, 11))
    for ra, rb in zip(log_a, log_b):
        assert all(ra[k] == rb[k] for k in ("lr", "wd", "momentum", "teacher_temp"))
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)
