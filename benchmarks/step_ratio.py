"""UDI model step / DINO model step at ImageNet settings, on the CPU.

ViT-S/16 (configs udi_vits16_in1k_300ep / dino_vits16_in1k_300ep), globals 224 / locals 96, 10
locals, K prototypes, batch 4, fp32 (``train.precision=bf16``: the configs' own bf16 autocast,
which this script used before session 8 while saying fp32), one thread. The views of one batch
are made once and reused, so a step is the model's work only (teacher forward, student forward
and backward, optimiser, EMA). Process CPU time, the two methods interleaved step by step, median
over ``--steps``. It also prints the ratio of the two steps' floating-point operations
(``torch.utils.flop_counter``: the matrix products and convolutions, not the attention kernels,
one step each), which no other process on the machine can disturb.
It uses only the public Trainer API, so it runs on an older checkout too (before/after):

    .venv/bin/python benchmarks/step_ratio.py [--k 65536] [--steps 5] [--warmup 3] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from udi.config import load_config, resolve_config_path
from udi.train.loop import Trainer


def trainer_with_fixed_views(config: str, k: int, batch: int, extra: list[str] = ()) -> Trainer:
    # fp32 unless the caller says otherwise: the ImageNet configs train in bf16, and autocast to
    # bf16 on a CPU with bf16 matrix units is faster than fp32 and has another ratio.
    overrides = ["train.precision=fp32", *extra, "data.path=null", "data.name=scenes", "data.scenes_size=256", f"data.scenes_num_images={4 * batch}",
                 "data.num_workers=0", f"train.batch_size={batch}", "train.device=cpu", "train.progress=false",
                 f"head.out_dim={k}", "train.epochs=100"]
    trainer = Trainer(load_config(resolve_config_path(config), overrides), tempfile.mkdtemp(prefix="udi_ratio_"))
    items = default_collate([trainer.dataset[i] for i in range(batch)])
    inputs = trainer.method.make_inputs(items, trainer.device, torch.Generator().manual_seed(0),
                                        trainer._schedules(1))
    trainer.method.make_inputs = lambda *args, **kwargs: inputs  # the model's work only
    trainer.fixed_batch = items
    return trainer


def cpu_seconds(trainer: Trainer) -> float:
    start = time.process_time()
    trainer.train_step(trainer.fixed_batch, epoch=1)
    return time.process_time() - start


def step_flops(trainer: Trainer) -> int:
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(trainer.fixed_batch, epoch=1)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=65536)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the heap grows to its size)")
    parser.add_argument("overrides", nargs="*", help="config overrides for both, e.g. train.retain_cpu_memory=false")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trainers = {m: trainer_with_fixed_views(f"{m}_vits16_in1k_300ep", args.k, args.batch, args.overrides)
                for m in ("udi", "dino")}
    times: dict[str, list[float]] = {m: [] for m in trainers}
    for _ in range(args.warmup):
        for trainer in trainers.values():
            cpu_seconds(trainer)
    for _ in range(args.steps):
        for m, trainer in trainers.items():
            times[m].append(cpu_seconds(trainer))
    result = {f"{m} step (s)": round(statistics.median(t), 3) for m, t in times.items()}
    result["udi / dino"] = round(result["udi step (s)"] / result["dino step (s)"], 3)
    # The fastest step of each: noise here (other processes, the kernel reclaiming memory) only adds time.
    result["udi / dino (fastest steps)"] = round(min(times["udi"]) / min(times["dino"]), 3)
    per_step = [u / d for u, d in zip(times["udi"], times["dino"])]  # neighbours in time: slow drifts cancel
    result["udi / dino (median of per-step ratios)"] = round(statistics.median(per_step), 3)
    result["per-step udi / dino"] = [round(r, 3) for r in per_step]
    flops = {m: step_flops(trainer) for m, trainer in trainers.items()}
    result.update({f"{m} step (GFLOP)": round(f / 1e9, 1) for m, f in flops.items()})
    result["udi / dino (FLOP)"] = round(flops["udi"] / flops["dino"], 4)
    print(json.dumps({"k": args.k, "batch": args.batch, "steps": args.steps, "overrides": args.overrides, **result}))


if __name__ == "__main__":
    main()
