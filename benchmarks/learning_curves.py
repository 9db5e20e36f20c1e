"""Learning curves: UDI, DINO and Bootleg with the same CPU recipe and budget, several seeds.

Each method pretrains with the recipe config (UDI and DINO: `--config`, DINO = the same with
the extra token and the patch level off; Bootleg: `bootleg_cpu_demo` with the recipe's model,
epochs, batch size and optimiser length) for every seed, with the online k-NN of the teacher
(`train.eval_every`) on. Then every teacher, the random initialisation (step 0 of seed 0 of
each method) and raw pixels go through the same protocols on `scenes` ([cls] and the mean
patch token). Written to `--out`:

- `learning_curves.md`: one table, mean +- std over seeds per method, with the baseline and
  chance rows (raw pixels: k-NN, linear and low-shot only), the number of seeds and images;
- `learning_curves.png`: online k-NN top-1 ([cls], mean patch token) against the training
  step, one line per method (mean over seeds, band = min..max);
- `learning_curves.json`: everything.
With `--benchmarks BENCHMARKS.md` the table and the PNG link replace the block between
`<!-- learning_curves:start -->` and `<!-- learning_curves:end -->` of that file.

    .venv/bin/python benchmarks/learning_curves.py [--config udi_cpu_recipe] [--seeds 0,1,2]
        [--methods udi,dino,bootleg] [--out runs/learning_curves] [--benchmarks BENCHMARKS.md] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from matplotlib.figure import Figure

from udi.config import load_config, resolve_config_path
from udi.eval.baselines import CHANCE, RANDOM_INIT, pixel_baselines, random_init
from udi.eval.suite import SuiteOptions, comparison_rows, run_suite
from udi.models.pretrained import load_backbone
from udi.train.loop import pretrain
from udi.viz.curves import read_log

MARK_START, MARK_END = "<!-- learning_curves:start -->", "<!-- learning_curves:end -->"


def method_config(recipe: str, method: str, seed: int, overrides: list[str]) -> dict:
    """The recipe for ``method`` and ``seed`` (its ``train.eval_every`` drives the curves)."""
    common = [f"train.seed={seed}", "train.progress=false", *overrides]
    if method != "bootleg":
        return load_config(resolve_config_path(recipe), [f"method={method}", *common])
    udi = method_config(recipe, "udi", seed, overrides)
    shared = [f"model.{k}={json.dumps(v)}" for k, v in udi["model"].items() if v is not None]
    shared += [f"train.{k}={json.dumps(udi['train'][k])}" for k in ("epochs", "batch_size", "eval_every",
                                                                  "eval_images", "log_every")]
    return load_config(resolve_config_path("bootleg_cpu_demo"), [*shared, *common])


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}"


def curves_figure(logs: dict[str, list[list[dict]]]) -> Figure:
    """Online k-NN against step: one panel per feature, one line per method (band: min..max over seeds)."""
    fig = Figure(figsize=(10, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, title in zip(axes, ("knn_cls", "knn_patch_mean"), ("[cls]", "mean patch token")):
        for method, runs in logs.items():
            per_seed = [{r["step"]: r[key] for r in log if key in r} for log in runs]
            steps = sorted(set.intersection(*(set(s) for s in per_seed)))
            if not steps:
                continue
            values = [[s[step] for s in per_seed] for step in steps]
            ax.plot(steps, [statistics.mean(v) for v in values], marker="o", markersize=3, label=method)
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
        ax.set_title(f"online k-NN top-1 (%), {title}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def markdown(rows: dict[str, dict[str, str]]) -> str:
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(row.get(c, "-") for c in columns) + " |" for name, row in rows.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="udi_cpu_recipe", help="the UDI recipe (DINO: the same, method=dino)")
    parser.add_argument("--methods", default="udi,dino,bootleg")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--protocols", default="knn,linear,lowshot,dense,richness")
    parser.add_argument("--out", default="runs/learning_curves")
    parser.add_argument("--benchmarks", help="a markdown file whose learning_curves block is replaced")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    args = parser.parse_args()
    out, seeds, methods = Path(args.out), [int(s) for s in args.seeds.split(",")], args.methods.split(",")
    protocols, features = args.protocols.split(","), ["cls", "patch_mean"]
    options = SuiteOptions(linear_augment=False, linear_epochs=30, lowshot_repeats=1, progress=False)

    results, logs, seconds = {}, {}, {}
    for method in methods:
        logs[method] = []
        for seed in seeds:
            cfg = method_config(args.config, method, seed, args.overrides)
            run = out / f"{method}_seed{seed}"
            tick = time.perf_counter()
            pretrain(cfg, run)
            seconds[f"{method} seed {seed}"] = round(time.perf_counter() - tick, 1)
            logs[method].append(read_log(run / "log.jsonl"))
            results[(method, seed)] = run_suite(load_backbone(run), "scenes", protocols, features,
                                                out / "eval" / run.name, options=options)
    references = {}
    for method in methods:
        cfg = method_config(args.config, method, seeds[0], args.overrides)
        references[f"{RANDOM_INIT} ({method})"] = random_init(load_backbone(out / f"{method}_seed{seeds[0]}"), cfg)
    # Pixel rows without richness: its probes on 3 x 32 x 32 values take many minutes.
    references.update(pixel_baselines(load_backbone(out / f"{methods[0]}_seed{seeds[0]}"),
                                      tuple(p for p in ("knn", "linear", "lowshot") if p in protocols)))
    for name, backbone in references.items():
        results[(name, None)] = run_suite(backbone, "scenes", protocols, features, out / "eval" / name.replace(" ", "_"),
                                          options=options)

    flat = comparison_rows({f"{m} seed {s}" if s is not None else m: r for (m, s), r in results.items()})
    table: dict[str, dict[str, str]] = {}
    for method in methods:
        per_seed = [flat[f"{method} seed {s}"] for s in seeds]
        table[f"{method} ({len(seeds)} seeds)"] = {c: mean_std([row[c] for row in per_seed])
                                                   for c in per_seed[0] if all(c in row for row in per_seed)}
    for name in [*references, CHANCE]:
        table[name] = {c: f"{v:.2f}" for c, v in flat[name].items()}
    steps = {m: logs[m][0][-1]["step"] for m in methods}
    header = (f"`benchmarks/learning_curves.py --config {args.config} --seeds {args.seeds} "
              f"{' '.join(args.overrides)}`: scenes, 10,000 train / 2,000 val images, "
              f"steps {steps}, seconds per run {seconds}.\n\n")
    out.mkdir(parents=True, exist_ok=True)
    figure = curves_figure(logs)
    figure.savefig(out / "learning_curves.png")
    png = "learning_curves.png"
    if args.benchmarks:  # the picture goes beside the benchmarks page, in benchmarks/
        png = "benchmarks/learning_curves.png"
        figure.savefig(Path(args.benchmarks).parent / png)
    text = header + markdown(table) + f"\n![online k-NN against step]({png})\n"
    (out / "learning_curves.md").write_text(text)
    (out / "learning_curves.json").write_text(json.dumps(
        {"table": table, "seconds": seconds, "results": {f"{m} {s}": r for (m, s), r in results.items()}}, indent=2))
    if args.benchmarks:
        path = Path(args.benchmarks)
        page = path.read_text()
        if MARK_START not in page or MARK_END not in page:
            raise SystemExit(f"{path} has no {MARK_START} ... {MARK_END} block to replace")
        before, rest = page.split(MARK_START, 1)
        after = rest.split(MARK_END, 1)[1]
        path.write_text(before + MARK_START + "\n" + text + MARK_END + after)
    print(text)


if __name__ == "__main__":
    main()
