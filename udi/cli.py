"""Command line: ``udi pretrain``, ``udi eval``, ``udi demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from udi.config import ConfigError, load_config, resolve_config_path

console = Console(stderr=True)


def _table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    """Rows (model name -> metrics) as a table; the best value per column in bold."""
    columns = sorted({c for metrics in rows.values() for c in metrics}, key=lambda c: (len(c), c))
    table = Table(title=title)
    table.add_column("model")
    for column in columns:
        table.add_column(column, justify="right")
    best = {c: max(m.get(c, float("-inf")) for m in rows.values()) for c in columns}
    for name, metrics in rows.items():
        cells = []
        for c in columns:
            value = metrics.get(c)
            text = "-" if value is None else f"{value:.2f}"
            cells.append(f"[bold]{text}[/bold]" if value is not None and value == best[c] and len(rows) > 1 else text)
        table.add_row(name, *cells)
    return table


def cmd_pretrain(args) -> int:
    from udi.train.loop import pretrain

    cfg = load_config(resolve_config_path(args.config) if args.config else None, args.overrides)
    summary = pretrain(cfg, args.out)
    print(json.dumps(summary))
    return 0


def cmd_eval(args) -> int:
    from udi.eval.run import run_knn
    from udi.models.pretrained import load_backbone

    protocols = [args.protocol] if args.protocol else args.protocols.split(",")
    unsupported = [p for p in protocols if p != "knn"]
    if unsupported:
        raise ConfigError(f"protocol(s) not available yet: {', '.join(unsupported)} (available: knn)")
    device = _device(args.device)
    backbone = load_backbone(args.weights)
    metrics = run_knn(backbone, args.data, features=args.features, device=device, image_size=args.image_size)
    console.print(_table(f"k-NN ({args.features}) on {args.data}", {Path(args.weights).name: metrics}))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics))
    return 0


def cmd_demo(args) -> int:
    """UDI pretraining on the built-in scenes on the CPU, then k-NN: trained teacher vs random init."""
    from udi.eval.run import run_knn
    from udi.models.network import build_network
    from udi.models.pretrained import load_backbone
    from udi.train.loop import pretrain

    cfg = load_config(resolve_config_path(args.config), args.overrides)
    start = time.perf_counter()
    console.print(f"[bold]udi demo[/bold]: {cfg['method']} pretraining of {cfg['model']['arch']} on "
                  f"'{cfg['data']['name']}' into {args.out}")
    summary = pretrain(cfg, args.out)
    train_time = time.perf_counter() - start
    device = _device(cfg["train"]["device"])
    torch.manual_seed(cfg["train"]["seed"])  # the same initial weights the run started from
    random_backbone = build_network(cfg).backbone.eval()
    rows = {
        f"{cfg['method']} teacher ({summary['step']} steps)": run_knn(load_backbone(args.out), cfg["data"]["name"], device=device),
        "random init": run_knn(random_backbone, cfg["data"]["name"], device=device),
    }
    console.print(_table(f"k-NN top-1 (%) on {cfg['data']['name']} val, [cls] features", rows))
    console.print(f"pretraining took {train_time:.0f} s; run directory: {args.out}")
    print(json.dumps({"train_seconds": round(train_time, 1), **{name: m for name, m in rows.items()}}))
    return 0


def _device(preference: str) -> torch.device:
    from udi.train.distributed import resolve_device

    return resolve_device(preference)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="udi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="self-supervised pretraining (UDI or DINO); resumes from RUN_DIR/checkpoint.pt")
    p.add_argument("--config", help="a YAML config file or the name of a shipped one (configs/)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.batch_size=32")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help="evaluate a frozen backbone")
    p.add_argument("protocol", nargs="?", help="shorthand for --protocols PROTOCOL")
    p.add_argument("--weights", required=True, help="run directory, backbone.safetensors or checkpoint.pt")
    p.add_argument("--data", required=True, help="built-in name or a folder with train/ and val/")
    p.add_argument("--protocols", default="knn")
    p.add_argument("--features", default="cls", help="cls | cls+ | cls_cat | patch_mean")
    p.add_argument("--image-size", type=int, default=None, help="evaluation crop size (default: the backbone's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="directory for metrics.json")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="pretrain on the built-in scenes on the CPU and compare with random init")
    p.add_argument("--config", default="udi_cpu_demo")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
