"""UDI vs DINO on `scenes` with the same budget, then one comparison table (BENCHMARKS.md).

Both methods pretrain from the CPU demo config with the same steps, seed, architecture and
data; only ``method`` differs (DINO = UDI with the extra token and the patch level off).
Then every backbone, and the common random initialisation, goes through the same protocols.

    .venv/bin/python benchmarks/udi_vs_dino.py [--steps 400] [--out runs/udi_vs_dino] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from udi.cli import compare_runs
from udi.config import load_config, resolve_config_path
from udi.eval.suite import SuiteOptions
from udi.models.network import build_network
from udi.models.pretrained import load_backbone
from udi.train.loop import pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps for each method")
    parser.add_argument("--out", default="runs/udi_vs_dino")
    parser.add_argument("--protocols", default="knn,linear,lowshot,selagg,dense,richness")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to both methods")
    args = parser.parse_args()
    out = Path(args.out)
    start = time.perf_counter()
    runs, seconds = {}, {}
    for method in ("udi", "dino"):
        cfg = load_config(resolve_config_path("udi_cpu_demo"),
                          [f"method={method}", f"train.max_steps={args.steps}", *args.overrides])
        tick = time.perf_counter()
        pretrain(cfg, out / method)
        seconds[method] = round(time.perf_counter() - tick, 1)
        runs[f"{method} ({args.steps} steps)"] = load_backbone(out / method)
    torch.manual_seed(cfg["train"]["seed"])  # the initial weights both runs started from
    runs["random init"] = build_network(load_config(resolve_config_path("udi_cpu_demo"), args.overrides)).backbone.eval()
    options = SuiteOptions(linear_augment=False, linear_epochs=30, lowshot_repeats=3, progress=True)
    rows = compare_runs(runs, "scenes", args.protocols.split(","), out / "compare", torch.device("cpu"), options)
    total = round(time.perf_counter() - start, 1)
    print(json.dumps({"pretrain_seconds": seconds, "total_seconds": total, "rows": rows}))


if __name__ == "__main__":
    main()
