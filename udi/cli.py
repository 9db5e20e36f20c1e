"""Command line: ``udi pretrain``, ``udi eval``, ``udi demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from udi.config import ConfigError, load_config, resolve_config_path

console = Console(stderr=True)


def cmd_pretrain(args) -> int:
    from udi.train.loop import pretrain

    cfg = load_config(resolve_config_path(args.config) if args.config else None, args.overrides)
    summary = pretrain(cfg, args.out)
    print(json.dumps(summary))
    return 0


def _suite_options(args) -> "SuiteOptions":
    from udi.eval.suite import SuiteOptions

    return SuiteOptions(
        image_size=args.image_size,
        batch_size=args.batch_size,
        linear_epochs=args.linear_epochs,
        linear_augment=not args.linear_cached,
        selagg_epochs=args.selagg_epochs,
        dense_epochs=args.dense_epochs,
        max_images=args.max_images,
        progress=not args.no_progress,
    )


def _protocol_list(args) -> list[str] | None:
    if getattr(args, "protocol", None):
        return [args.protocol]
    return args.protocols.split(",") if args.protocols else None


def cmd_eval(args) -> int:
    from udi.eval.suite import check_protocols, run_suite, summarize
    from udi.eval.tables import markdown_table, metric_table
    from udi.models.pretrained import load_backbone

    check_protocols(args.data, _protocol_list(args))  # before the (possibly slow) weights
    backbone = load_backbone(args.weights, num_heads=args.num_heads)
    out = Path(args.out) if args.out else None
    results = run_suite(
        backbone, args.data, _protocol_list(args), args.features.split(",") if args.features else None,
        out_dir=out, device=_device(args.device), options=_suite_options(args),
    )
    row = summarize(results)
    console.print(metric_table(row, f"{Path(args.weights).name} on {args.data}"))
    if out is not None:
        (out / "metrics.json").write_text(json.dumps(results, indent=2))
        (out / "metrics.md").write_text(markdown_table({Path(args.weights).name: row}))
    print(json.dumps(results))
    return 0


def compare_runs(runs: dict, data: str, protocols, out: Path | None, device, options) -> dict:
    """Evaluate several backbones (name -> backbone) with the same protocols; one row each."""
    from udi.eval.suite import run_suite, summarize
    from udi.eval.tables import compare_table, markdown_table

    rows, results = {}, {}
    for name, backbone in runs.items():
        sub = out / _slug(name) if out else None
        results[name] = run_suite(backbone, data, protocols, out_dir=sub, device=device, options=options)
        rows[name] = summarize(results[name])
    console.print(compare_table(rows, f"{data}: best per column marked *", width=console.width))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(markdown_table(rows))
        (out / "compare.json").write_text(json.dumps(results, indent=2))
    return rows


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def cmd_compare(args) -> int:
    from udi.eval.suite import check_protocols
    from udi.models.pretrained import load_backbone

    check_protocols(args.data, _protocol_list(args))
    runs = {}
    for path in args.runs:
        name = Path(path).name if Path(path).is_dir() else Path(path).stem
        runs[name] = load_backbone(path)
    out = Path(args.out) if args.out else None
    rows = compare_runs(runs, args.data, _protocol_list(args), out, _device(args.device), _suite_options(args))
    print(json.dumps(rows))
    return 0


def cmd_demo(args) -> int:
    """UDI pretraining on the built-in scenes on the CPU, then the evaluation suite:
    trained teacher vs the same network at random initialisation."""
    from udi.eval.suite import SuiteOptions
    from udi.models.network import build_network
    from udi.models.pretrained import load_backbone
    from udi.train.loop import pretrain

    cfg = load_config(resolve_config_path(args.config), args.overrides)
    start = time.perf_counter()
    console.print(f"[bold]udi demo[/bold]: {cfg['method']} pretraining of {cfg['model']['arch']} on "
                  f"'{cfg['data']['name']}' into {args.out}")
    summary = pretrain(cfg, args.out)
    train_time = time.perf_counter() - start
    torch.manual_seed(cfg["train"]["seed"])  # the initial weights of the run: build before anything else draws
    random_init = build_network(cfg).backbone.eval()
    runs = {f"{cfg['method']} teacher ({summary['step']} steps)": load_backbone(args.out), "random init": random_init}
    options = SuiteOptions(linear_augment=False, linear_epochs=30, lowshot_repeats=1, progress=True)
    rows = compare_runs(runs, cfg["data"]["name"], args.protocols.split(","), Path(args.out) / "eval",
                        _device(cfg["train"]["device"]), options)
    console.print(f"pretraining took {train_time:.0f} s; run directory: {args.out}")
    print(json.dumps({"train_seconds": round(train_time, 1), **rows}))
    return 0


def _device(preference: str) -> torch.device:
    from udi.train.distributed import resolve_device

    return resolve_device(preference)


def build_parser() -> argparse.ArgumentParser:
    from udi.eval.suite import PROTOCOLS

    parser = argparse.ArgumentParser(prog="udi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="self-supervised pretraining (UDI or DINO); resumes from RUN_DIR/checkpoint.pt")
    p.add_argument("--config", help="a YAML config file or the name of a shipped one (configs/)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.batch_size=32")
    p.set_defaults(func=cmd_pretrain)

    def suite_arguments(p):
        p.add_argument("--data", required=True, help="built-in name (scenes, mnist5k, digits) or a folder with train/ and val/")
        p.add_argument("--protocols", help=f"comma-separated, any of {','.join(PROTOCOLS)} (default: all the data supports)")
        p.add_argument("--image-size", type=int, default=None, help="evaluation crop size (default: the backbone's)")
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--linear-epochs", type=int, default=100)
        p.add_argument("--linear-cached", action="store_true", help="linear probe on cached features, no augmentation (fast)")
        p.add_argument("--selagg-epochs", type=int, default=50)
        p.add_argument("--dense-epochs", type=int, default=20)
        p.add_argument("--max-images", type=int, help="only the first N images of each split (quick looks)")
        p.add_argument("--device", default="auto")
        p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("eval", help="evaluate a frozen backbone with the protocols of METHODS.md section 6")
    p.add_argument("protocol", nargs="?", choices=PROTOCOLS, help="shorthand for --protocols PROTOCOL")
    p.add_argument("--weights", required=True, help="run directory, backbone.safetensors, checkpoint.pt, or DINO/timm ViT weights")
    p.add_argument("--features", help="comma-separated: cls, cls+, cls_cat, patch_mean, lastN (default: each protocol's)")
    p.add_argument("--num-heads", type=int, help="heads of converted DINO/timm weights (default embed_dim/64)")
    p.add_argument("--out", help="directory for metrics.json, metrics.md, cached features and plots")
    suite_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="evaluate several checkpoints with the same protocols: one table")
    p.add_argument("runs", nargs="+", help="run directories or weights files")
    p.add_argument("--out", help="directory for compare.md and compare.json")
    suite_arguments(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="pretrain on the built-in scenes on the CPU and compare with random init")
    p.add_argument("--config", default="udi_cpu_demo")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--protocols", default="knn,lowshot,richness", help="protocols of the final comparison")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
