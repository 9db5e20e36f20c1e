"""Step-time benchmarks of pretraining (results go to BENCHMARKS.md).

CPU (default), on the demo config, all in one process:
  - time of one UDI training step / one DINO step (target <= 1.3);
  - time of producing a batch of views + correspondence maps / time of the model step (target <= 0.25);
  - peak memory of each method (max RSS of a child process running only that method).

The GPU benchmark (ViT-S/16 UDI and DINO, images/s and MFU) is ``benchmarks/gpu_bench.py``, which
builds and times its steps with the helpers here.

    .venv/bin/python benchmarks/step_time.py [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils.data import default_collate

from udi.config import load_config, resolve_config_path
from udi.data.views import make_udi_views
from udi.train.loop import Trainer


def make_trainer(config: str, overrides: list[str]) -> Trainer:
    cfg = load_config(resolve_config_path(config), ["train.progress=false", *overrides])
    return Trainer(cfg, tempfile.mkdtemp(prefix="udi_bench_"))


def fixed_batch(trainer: Trainer) -> dict:
    return default_collate([trainer.dataset[i] for i in range(trainer.cfg["train"]["batch_size"])])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer: Trainer, batch: dict, steps: int, warmup: int = 2) -> list[float]:
    times = []
    for i in range(warmup + steps):
        sync(trainer.device)
        start = time.perf_counter()
        trainer.train_step(batch, epoch=1)
        sync(trainer.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def time_views(trainer: Trainer, batch: dict, steps: int) -> list[float]:
    canvas, aspect = batch["image"].to(trainer.device), batch["aspect"].to(trainer.device)
    times = []
    for i in range(steps + 2):
        generator = torch.Generator().manual_seed(i)
        sync(trainer.device)
        start = time.perf_counter()
        make_udi_views(canvas, aspect, trainer.method.spec, generator, trainer.method.photometric)
        sync(trainer.device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return times


def peak_rss_mib(method: str, steps: int) -> float:
    """Max RSS of a fresh process that runs only ``method`` for ``steps`` steps."""
    code = (
        "import resource, sys; sys.path.insert(0, 'benchmarks'); import step_time as b; "
        f"t = b.make_trainer('udi_cpu_demo', ['method={method}']); batch = b.fixed_batch(t); "
        f"b.time_steps(t, batch, {steps}); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def cpu_benchmark(steps: int) -> dict:
    udi, dino = make_trainer("udi_cpu_demo", ["method=udi"]), make_trainer("udi_cpu_demo", ["method=dino"])
    batch = fixed_batch(udi)
    # Interleave the two methods so that machine noise hits both alike.
    udi_times, dino_times = [], []
    for _ in range(steps):
        udi_times += time_steps(udi, batch, 1, warmup=0 if udi_times else 2)
        dino_times += time_steps(dino, batch, 1, warmup=0 if dino_times else 2)
    views = time_views(udi, batch, steps)
    udi_step, dino_step, view_time = (statistics.median(t) for t in (udi_times, dino_times, views))
    return {
        "config": "udi_cpu_demo",
        "threads": torch.get_num_threads(),
        "batch_size": udi.cfg["train"]["batch_size"],
        "udi_step_s": round(udi_step, 4),
        "dino_step_s": round(dino_step, 4),
        "udi_over_dino": round(udi_step / dino_step, 3),
        "views_s": round(view_time, 4),
        "views_over_udi_step": round(view_time / udi_step, 3),
        "peak_rss_mib_udi": round(peak_rss_mib("udi", 3)),
        "peak_rss_mib_dino": round(peak_rss_mib("dino", 3)),
    }


def matmul_peak_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """TFLOP/s of ``repeats`` bf16 ``size``^3 matrix products (after 3 warm-ups): the peak of MFU."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(cpu_benchmark(args.steps), indent=2))


if __name__ == "__main__":
    main()
