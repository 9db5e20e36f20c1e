"""UDI vs DINO vs Bootleg on `scenes` with the same budget, then one comparison table (BENCHMARKS.md).

UDI and DINO pretrain from the CPU demo config (`udi_cpu_demo`; DINO = UDI with the extra token
and the patch level off), Bootleg from `bootleg_cpu_demo`: the same steps, seed, batch size,
architecture (vit_nano/8) and data; each method keeps its own views (UDI/DINO: 2 global crops of
32 px + 4 locals of 16 px; Bootleg: one 32 px crop, masked). Then every backbone, and the random
initialisation of each run, goes through the same protocols with the same features: [cls]
(what UDI/DINO train) and the mean patch token (Bootleg's natural feature; it trains no [cls]
objective). Reported per method: pretraining wall time and images per second.

    .venv/bin/python benchmarks/udi_vs_dino.py [--steps 400] [--out runs/udi_vs_dino] [--methods udi,dino,bootleg]
        [--features cls,patch_mean] [--max-images N] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from udi.config import load_config, resolve_config_path
from udi.eval.suite import SuiteOptions, run_suite, summarize
from udi.eval.tables import compare_table, markdown_table
from udi.methods import build_network
from udi.models.pretrained import load_backbone
from udi.train.loop import pretrain

CONFIGS = {"udi": "udi_cpu_demo", "dino": "udi_cpu_demo", "bootleg": "bootleg_cpu_demo"}


def method_config(method: str, steps: int, overrides: list[str]) -> dict:
    return load_config(resolve_config_path(CONFIGS[method]), [f"method={method}", f"train.max_steps={steps}", *overrides])


def logged_images_per_sec(run: Path) -> float:
    """Median of the logged throughput, without the first interval (start-up)."""
    values = [json.loads(line)["images_per_sec"] for line in (run / "log.jsonl").read_text().splitlines()]
    return round(statistics.median(values[1:] or values), 1)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps for each method")
    parser.add_argument("--out", default="runs/udi_vs_dino")
    parser.add_argument("--methods", default="udi,dino,bootleg")
    parser.add_argument("--protocols", default="knn,linear,lowshot,selagg,dense,richness")
    parser.add_argument("--features", default="cls,patch_mean",
                        help="features of knn, linear, lowshot and richness, for every backbone (cls+ and cls_cat: "
                             "only where there is a second class token)")
    parser.add_argument("--max-images", type=int, help="evaluate on the first N images of each split only (quick looks)")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every method")
    args = parser.parse_args()
    out = Path(args.out)
    start = time.perf_counter()
    runs, timing = {}, {}
    for method in args.methods.split(","):
        cfg = method_config(method, args.steps, args.overrides)
        tick = time.perf_counter()
        pretrain(cfg, out / method)
        seconds = time.perf_counter() - tick
        timing[method] = {
            "pretrain_seconds": round(seconds, 1),
            "images_per_sec_wall": round(args.steps * cfg["train"]["batch_size"] / seconds, 1),
            "images_per_sec_logged": logged_images_per_sec(out / method),
        }
        runs[f"{method} ({args.steps} steps)"] = load_backbone(out / method)
    # The initial weights of each run (build first after seeding, as the trainer does); DINO and
    # Bootleg start from the same backbone (one class token), UDI from its own (two).
    inits: dict[str, torch.nn.Module] = {}
    for method in args.methods.split(","):
        cfg = method_config(method, args.steps, args.overrides)
        torch.manual_seed(cfg["train"]["seed"])
        backbone = build_network(cfg).backbone.eval()
        same = [name for name, other in inits.items() if _same_weights(backbone, other)]
        if same:
            inits[f"{same[0]}, {method}"] = inits.pop(same[0])
        else:
            inits[method] = backbone
    runs.update({f"random init ({name})": backbone for name, backbone in inits.items()})

    options = SuiteOptions(linear_augment=False, linear_epochs=30, lowshot_repeats=3, progress=True,
                           max_images=args.max_images)
    features = args.features.split(",")
    rows, results = {}, {}
    for name, backbone in runs.items():
        usable = [f for f in features if backbone.n_cls >= 2 or f not in ("cls+", "cls_cat")]
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        results[name] = run_suite(backbone, "scenes", args.protocols.split(","), usable, out / "compare" / slug,
                                  torch.device("cpu"), options)
        rows[name] = summarize(results[name])
    from rich.console import Console

    console = Console(stderr=True)
    console.print(compare_table(rows, "scenes: best per column marked *", width=console.width))
    (out / "compare").mkdir(parents=True, exist_ok=True)
    (out / "compare" / "compare.md").write_text(markdown_table(rows))
    (out / "compare" / "compare.json").write_text(json.dumps({"timing": timing, "results": results}, indent=2))
    total = round(time.perf_counter() - start, 1)
    print(json.dumps({"timing": timing, "total_seconds": total, "rows": rows}))


if __name__ == "__main__":
    main()
