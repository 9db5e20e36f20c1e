"""Command line: ``udi pretrain``, ``udi eval``, ``udi compare``, ``udi demo``, ``udi viz``, ``udi embed``, ``udi report``,
``udi shards make``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from udi.config import ConfigError, load_config, resolve_config_path
from udi.train.stop import TrainingStopped

console = Console(stderr=True)


def run_dir_argument(path: str | Path, option: str = "--out") -> None:
    """A run directory to write: new or a folder, not a file."""
    if Path(path).exists() and not Path(path).is_dir():
        raise NotADirectoryError(f"{option} {path} is a file; expected a run directory (a new or an existing folder)")


def cmd_pretrain(args) -> int:
    from udi.train.loop import pretrain

    cfg = load_config(resolve_config_path(args.config) if args.config else None, args.overrides)
    run_dir_argument(args.out)
    summary = pretrain(cfg, args.out, restart=args.restart, allow_changes=args.allow_changes)
    print(json.dumps(summary))
    return 0


def _suite_options(args) -> "SuiteOptions":
    from udi.eval.suite import SuiteOptions

    return SuiteOptions(
        image_size=args.image_size,
        batch_size=args.batch_size,
        linear_epochs=args.linear_epochs,
        linear_augment=True if args.linear_augmented else False if args.linear_cached else None,
        selagg_epochs=args.selagg_epochs,
        dense_epochs=args.dense_epochs,
        max_images=args.max_images,
        progress=not args.no_progress,
    )


def _protocol_list(args) -> list[str] | None:
    if getattr(args, "protocol", None):
        return [args.protocol]
    return args.protocols.split(",") if args.protocols else None


def evaluate(backbone, name: str, data: str, protocols, features, out: Path | None, device, options,
             weights: str | Path | None = None) -> dict:
    """Run the suite on one backbone, print its table, write ``metrics.json`` and ``metrics.md`` in ``out``
    (``metrics.json`` after each protocol too: an interrupted evaluation keeps what it finished)."""
    from udi.eval.suite import images_note, linear_note, run_suite, summarize, write_results
    from udi.eval.tables import markdown_table, metric_table

    from udi.eval.baselines import chance_row

    save = (lambda partial: write_results(out / "metrics.json", partial)) if out is not None else None
    results = run_suite(backbone, data, protocols, features, out_dir=out, device=device, options=options,
                        weights=weights, on_protocol=save)
    row = summarize(results)
    chance = chance_row(results["chance"], list(row)) if "chance" in results else None
    notes = [images_note(results), linear_note(results), source_note(results)]
    notes = [n for n in notes if n]
    console.print(metric_table(row, f"{name} on {data}", chance))
    for note in notes:
        console.print(escape(note))
    if out is not None:
        write_results(out / "metrics.json", results)
        (out / "metrics.md").write_text(markdown_table({name: row}) + "\n" + "".join(f"{n}\n\n" for n in notes))
    return results


def source_note(results: dict) -> str | None:
    """One line naming what ``results`` were measured on (their ``source``)."""
    source = results.get("source")
    if not source:
        return None
    step = f" (step {source['step']})" if source.get("step") is not None else ""
    sizes = source.get("images_used") or {}
    return (f"source: {source.get('weights')}{step}, method {source.get('method') or 'unknown'}; data "
            f"{source.get('data')} ({sizes.get('train')} train / {sizes.get('val')} val images), "
            f"{source.get('image_size')} px; udi {source.get('udi_version')}, {source.get('date')}")


def cmd_eval(args) -> int:
    from udi.eval.suite import check_protocols
    from udi.models.pretrained import load_backbone

    check_protocols(args.data, _protocol_list(args))  # before the (possibly slow) weights
    backbone = load_backbone(args.weights, num_heads=args.num_heads, pos_interp=args.pos_interp)
    if args.baselines:
        name = Path(args.weights).name
        runs = with_baselines({name: backbone}, args.weights)
        rows = compare_runs(runs, args.data, _protocol_list(args), Path(args.out) if args.out else None,
                            _device(args.device), _suite_options(args),
                            args.features.split(",") if args.features else None, weights={name: args.weights})
        print(json.dumps(rows))
        return 0
    results = evaluate(
        backbone, Path(args.weights).name, args.data, _protocol_list(args),
        args.features.split(",") if args.features else None, Path(args.out) if args.out else None,
        _device(args.device), _suite_options(args), weights=args.weights,
    )
    print(json.dumps(results))
    return 0


def with_baselines(runs: dict, weights: str | Path | None, cfg: dict | None = None, pixel_protocols=None) -> dict:
    """``runs`` (name -> backbone) followed by the reference rows of the first one: random init
    (the run's own step-0 weights when its config is known: ``cfg``, or the ``config.yaml`` of
    the run ``weights`` come from) and raw pixels with and without mean removal (running
    ``pixel_protocols``; None: every protocol they can)."""
    from udi.eval.baselines import PIXEL_PROTOCOLS, RANDOM_INIT, pixel_baselines, random_init, run_config

    reference = next(iter(runs.values()))
    if cfg is None and weights is not None:
        cfg = run_config(weights)
    pixels = pixel_baselines(reference, tuple(pixel_protocols or PIXEL_PROTOCOLS))
    return {**runs, RANDOM_INIT: random_init(reference, cfg), **pixels}


def compare_runs(runs: dict, data: str, protocols, out: Path | None, device, options, features=None,
                 weights: dict | None = None) -> dict:
    """Evaluate several backbones (name -> backbone, or a raw-pixel baseline) with the same
    protocols; one row each, then the chance row. features: as in ``run_suite`` (None: each
    protocol's default). weights: name -> the path each backbone came from (its results'
    ``source``). Each run's feature cache is ``out/<its name as a folder name>`` (distinct
    folders for distinct names); ``compare.json`` is rewritten after each protocol."""
    from udi.eval.baselines import CHANCE, RawPixels, pixel_note
    from udi.eval.suite import check_protocols, comparison_rows, images_note, linear_note, run_suite, write_results
    from udi.eval.tables import compare_table, markdown_table

    results: dict = {}
    folders = _unique_slugs(list(runs))
    for name, backbone in runs.items():
        sub = out / folders[name] if out else None

        def save(partial, name=name):
            write_results(out / "compare.json", {**results, name: partial})

        results[name] = run_suite(backbone, data, protocols, features, out_dir=sub, device=device, options=options,
                                  weights=(weights or {}).get(name), on_protocol=save if out else None)
    rows = comparison_rows(results)
    console.print(compare_table(rows, f"{data}: best per column marked *", width=console.width))
    pixels = [b for b in runs.values() if isinstance(b, RawPixels)]
    notes = [pixel_note(pixels[0], check_protocols(data, protocols))] if pixels else []
    first = next(iter(results.values()))  # every row used the same images
    notes += [n for n in (images_note(first), linear_note(first)) if n]
    notes += [f"{name}: {results[name]['source']['weights']}" for name in runs if (weights or {}).get(name)]
    for note in notes:
        console.print(escape(note))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(markdown_table(rows) + "\n" + "".join(f"{n}\n\n" for n in notes))
        write_results(out / "compare.json", results)
    return {name: row for name, row in rows.items() if name != CHANCE}  # the models


def run_names(paths: list[str]) -> dict[str, str]:
    """A distinct, short name for each run path (name -> path): the folder or file name, with as
    many parent folders as it takes to tell runs apart (``a/run``, ``b/run``); the same path
    given twice is an error."""
    full = [Path(p).resolve() for p in paths]
    if len(set(full)) < len(full):
        twice = sorted({str(f) for f in full if full.count(f) > 1})
        raise ValueError(f"the same run is given more than once: {', '.join(twice)}")
    parts = [f.parts[1:] if f.is_dir() else (*f.parts[1:-1], f.stem) for f in full]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return dict(zip(names, paths))
        depth += 1


def _unique_slugs(names: list[str]) -> dict[str, str]:
    """A folder name per run name, distinct even where two names slug alike (``a/b`` and ``a_b``)."""
    out, used = {}, set()
    for name in names:
        slug, n = _slug(name), 2
        while slug.lower() in used:
            slug, n = f"{_slug(name)}-{n}", n + 1
        used.add(slug.lower())
        out[name] = slug
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def cmd_compare(args) -> int:
    from udi.eval.suite import check_protocols
    from udi.models.pretrained import load_backbone

    check_protocols(args.data, _protocol_list(args))
    paths = run_names(args.runs)  # distinct names: runs in folders named alike keep their own rows
    runs = {name: load_backbone(path) for name, path in paths.items()}
    if args.baselines:
        runs = with_baselines(runs, args.runs[0])
    out = Path(args.out) if args.out else None
    rows = compare_runs(runs, args.data, _protocol_list(args), out, _device(args.device), _suite_options(args),
                        weights=paths)
    print(json.dumps(rows))
    return 0


def cmd_demo(args) -> int:
    """UDI pretraining on the built-in scenes on the CPU, then the evaluation suite: trained
    teacher vs the same network at its initial weights and raw pixels; ends with the run's report."""
    from udi.eval.suite import SuiteOptions
    from udi.models.pretrained import load_backbone
    from udi.train.loop import pretrain

    cfg = load_config(resolve_config_path(args.config), args.overrides)
    run_dir_argument(args.out)
    start = time.perf_counter()
    console.print(f"[bold]udi demo[/bold]: {cfg['method']} pretraining of {cfg['model']['arch']} on "
                  f"'{cfg['data']['name']}' into {escape(str(args.out))}")
    summary = pretrain(cfg, args.out)
    train_time = time.perf_counter() - start
    teacher = load_backbone(args.out)
    # Pixel rows: k-NN only (low-shot and richness probes on 3 x 32 x 32 values take minutes).
    teacher_name = f"{cfg['method']} teacher ({summary['step']} steps)"
    runs = with_baselines({teacher_name: teacher}, None, cfg, pixel_protocols=("knn",))
    options = SuiteOptions(linear_augment=False, linear_epochs=30, lowshot_repeats=1, progress=True)
    # k-NN is cheap: show it beyond [cls] too ([cls+] of UDI, the mean patch token).
    knn_features = ["cls"] + (["cls+"] if teacher.n_cls >= 2 else []) + ["patch_mean"]
    rows = compare_runs(runs, cfg["data"]["name"], args.protocols.split(","), Path(args.out) / "eval",
                        _device(cfg["train"]["device"]), options,
                        features={"knn": knn_features, "richness": knn_features},  # cls_cat: no richness (time)
                        weights={teacher_name: args.out})
    from udi.eval.baselines import verdicts

    console.print("[bold]the trained teacher against its baselines[/bold] (same protocols, same images):")
    for line in verdicts(rows, next(iter(runs))):
        console.print(f"  {escape(line)}")
    console.print("longer training learns more: udi pretrain --config udi_cpu_recipe (BENCHMARKS.md)")
    console.print(f"pretraining took {train_time:.0f} s; run directory: {escape(str(args.out))}")
    from udi.viz.report import write_report

    report = write_report(args.out, device=_device(cfg["train"]["device"]))
    console.print(f"report (curves, evaluation, attention maps, patch PCA): [bold]{escape(str(report))}[/bold]")
    print(json.dumps({"train_seconds": round(train_time, 1), **rows, "report": str(report)}))
    return 0


def _load_for_viz(args, with_srs: bool):
    """Backbone and (``with_srs``) SRS module of ``--weights`` on ``--device``; the SRS module is
    None when the weights have none."""
    from udi.models.pretrained import load_backbone, load_backbone_and_srs

    if with_srs:
        backbone, srs = load_backbone_and_srs(args.weights, num_heads=args.num_heads)
        if args.pos_interp:
            backbone.pos_interp = args.pos_interp
    else:  # a run directory's backbone.safetensors: no need to read the whole checkpoint
        backbone, srs = load_backbone(args.weights, num_heads=args.num_heads, pos_interp=args.pos_interp), None
    device = _device(args.device)
    return backbone.to(device), None if srs is None else srs.to(device)


def _input_size(args, backbone) -> int:
    size = args.image_size or backbone.img_size
    if size % backbone.patch_size:
        raise ValueError(f"--image-size {size} is not a multiple of the patch size {backbone.patch_size}")
    return size


def cmd_viz_attention(args) -> int:
    from udi.viz.attention import write_attention_grids
    from udi.viz.images import check_sources, load_views

    check_sources(args.image)  # before the (possibly slow) weights
    backbone, srs = _load_for_viz(args, with_srs=True)
    if srs is None:
        console.print(f"[yellow]note:[/yellow] no SRS module in {escape(str(args.weights))} (only UDI runs have one, saved in "
                      "their checkpoint.pt: give the run directory or that file): SRS rows skipped")
    views = load_views(args.image, _input_size(args, backbone))
    paths = write_attention_grids(backbone, srs, views, args.out, num_points=args.points, seed=args.seed)
    console.print(f"attention maps: {escape(', '.join(map(str, paths)))}")
    print(json.dumps({"images": [str(p) for p in paths], "srs": srs is not None}))
    return 0


def cmd_viz_pca(args) -> int:
    from udi.viz.attention import save_figure
    from udi.viz.images import check_sources, load_views
    from udi.viz.pca import patch_pca_figure

    check_sources(args.images)
    backbone, _ = _load_for_viz(args, with_srs=False)
    views = load_views(args.images, _input_size(args, backbone))
    fig = patch_pca_figure(backbone, views, threshold=None if args.no_mask else args.threshold)
    path = save_figure(fig, Path(args.out) / "pca.png")
    console.print(f"patch PCA: {escape(str(path))}")
    print(json.dumps({"image": str(path)}))
    return 0


def cmd_viz_curves(args) -> int:
    from udi.viz.curves import write_curves

    path = write_curves(args.run_dir, args.out)
    console.print(f"training curves: {escape(str(path))}")
    print(json.dumps({"image": str(path)}))
    return 0


def cmd_embed(args) -> int:
    from udi.eval.embed import default_num_workers, embed_dataset, embedding_dataset, parse_embed_feature
    from udi.models.pretrained import load_backbone

    dataset, item_name, crop_fraction = embedding_dataset(args.data, args.split)  # before the weights
    backbone = load_backbone(args.weights, num_heads=args.num_heads, pos_interp=args.pos_interp)
    parse_embed_feature(args.features, backbone)
    result = embed_dataset(
        backbone, dataset, args.features, args.out, item_name, image_size=_input_size(args, backbone),
        crop_fraction=crop_fraction, batch_size=args.batch_size, device=_device(args.device),
        num_workers=default_num_workers(args.data) if args.num_workers is None else args.num_workers,
        dtype=args.dtype, progress=not args.no_progress,
    )
    console.print(escape(f"{result.shape[0]} images -> {result.array} {result.shape}; image names: {result.items}"))
    if result.skipped:
        shown = ", ".join(result.skipped[:5]) + (", ..." if len(result.skipped) > 5 else "")
        console.print(escape(f"skipped {len(result.skipped)} file(s) that could not be decoded (no row): {shown}"))
    print(json.dumps({"array": str(result.array), "items": str(result.items), "shape": list(result.shape),
                      "seconds": result.seconds, "skipped": result.skipped}))
    return 0


def cmd_report(args) -> int:
    from udi.models.pretrained import load_backbone
    from udi.viz.report import config_data, find_eval_results, read_run_config, write_report

    run = Path(args.run_dir)
    if args.eval and run.is_dir() and not find_eval_results(run):
        from udi.eval.suite import SuiteOptions, check_protocols

        data = args.data or config_data(read_run_config(run)[1])
        if data is None:
            raise ValueError(f"--eval: no data set to evaluate on (give --data; {run}/config.yaml names none)")
        protocols = check_protocols(data, args.eval.split(","))
        console.print(escape(f"no evaluation results in {run}: running {', '.join(protocols)} on '{data}' into {run / 'eval'}"))
        evaluate(load_backbone(run), run.name, data, protocols, None, run / "eval", _device(args.device),
                 SuiteOptions(linear_augment=False, linear_epochs=30, lowshot_repeats=1), weights=run)
    path = write_report(run, args.out, data=args.data, image_size=args.image_size, device=_device(args.device),
                        num_points=args.points)
    console.print(f"report: [bold]{escape(str(path))}[/bold]")
    print(json.dumps({"report": str(path)}))
    return 0


def cmd_shards_make(args) -> int:
    from udi.data.shards import make_shards

    result = make_shards(args.folder, args.out, args.shard_size, split=args.split)
    console.print(escape(f"wrote {result['samples']} images ({result['classes']} classes) to {result['shards']} "
                         f"shard(s) in {args.out}; pretrain with data.shards='{result['pattern']}'"))
    print(json.dumps(result))
    return 0


def cmd_shards_index(args) -> int:
    from udi.data.shards import expand_shards, write_index

    paths = expand_shards(args.shards)
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"shard {path} does not exist")
        write_index(path)
    console.print(escape(f"indexed {len(paths)} shard(s): {paths[0]}.idx.json, ..."))
    return 0


def _device(preference: str) -> torch.device:
    from udi.train.distributed import resolve_device

    return resolve_device(preference)


def build_parser() -> argparse.ArgumentParser:
    from udi.eval.suite import LINEAR_AUGMENT_MAX_TRAIN, PROTOCOLS

    from udi import __version__

    parser = argparse.ArgumentParser(
        prog="udi", description=__doc__,
        epilog="The methods (views, SRS, losses, schedules) and the evaluation protocols: docs/methods.md "
               "in the udi repository; config keys: its README.md, section Config.")
    parser.add_argument("--version", action="version", version=f"udi {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one 'error:' line (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="self-supervised pretraining (UDI, DINO or Bootleg: the config's method); resumes from RUN_DIR/checkpoint.pt")
    p.add_argument("--config", help="a YAML config file or the name of a shipped one (udi/configs/: udi_cpu_demo, ...)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.batch_size=32")
    p.add_argument("--restart", action="store_true",
                   help="start the run directory afresh: its files are moved to RUN_DIR/before-restart-TIME/")
    p.add_argument("--allow-changes", action="store_true",
                   help="resume even with settings that change the training trajectory (noted in RUN_DIR/train.log)")
    p.set_defaults(func=cmd_pretrain)

    def suite_arguments(p):
        p.add_argument("--data", required=True, help="built-in name (scenes, mnist5k, digits) or a folder with train/ and val/")
        p.add_argument("--protocols", help=f"comma-separated, any of {','.join(PROTOCOLS)} (default: all the data supports)")
        p.add_argument("--image-size", type=int, default=None, help="evaluation crop size (default: the backbone's)")
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--linear-epochs", type=int, default=100)
        linear = p.add_mutually_exclusive_group()
        linear.add_argument("--linear-cached", action="store_true",
                            help="linear probe on cached features, no augmentation (fast; the default above "
                                 f"{LINEAR_AUGMENT_MAX_TRAIN} train images)")
        linear.add_argument("--linear-augmented", action="store_true",
                            help="linear probe with augmentation, features recomputed every epoch (the default "
                                 f"up to {LINEAR_AUGMENT_MAX_TRAIN} train images)")
        p.add_argument("--selagg-epochs", type=int, default=50)
        p.add_argument("--dense-epochs", type=int, default=20)
        p.add_argument("--max-images", type=int, help="only the first N images of each split (quick looks)")
        p.add_argument("--device", default="auto")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--baselines", action="store_true",
                       help="add reference rows measured the same way: random init (the run's step-0 weights where "
                            "its config.yaml is known) and raw pixels, with and without each image's mean removed")

    p = sub.add_parser("eval", help="evaluate a frozen backbone with the protocols of docs/methods.md section 6")
    p.add_argument("protocol", nargs="?", choices=PROTOCOLS, help="shorthand for --protocols PROTOCOL")
    p.add_argument("--weights", required=True, help="run directory, backbone.safetensors, checkpoint.pt, or DINO/timm ViT weights")
    p.add_argument("--features", help="comma-separated: cls, cls+, cls_cat, patch_mean, lastN (default: each protocol's)")
    p.add_argument("--num-heads", type=int, help="heads of converted DINO/timm weights (default: from the file, else embed_dim/64 for widths 192/384/768/1024)")
    pos_interp_argument(p)
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

    def model_arguments(p, weights_help):
        p.add_argument("--weights", required=True, help=weights_help)
        p.add_argument("--image-size", type=int, help="model input size (default: the backbone's training size)")
        p.add_argument("--num-heads", type=int, help="heads of converted DINO/timm weights (default: from the file, else embed_dim/64 for widths 192/384/768/1024)")
        pos_interp_argument(p)
        p.add_argument("--device", default="auto", help="auto, cpu or cuda")

    viz = sub.add_parser("viz", help="pictures: attention maps, patch-feature PCA, training curves")
    viz_sub = viz.add_subparsers(dest="picture", required=True)
    p = viz_sub.add_parser("attention", help="last-block attention of each class token (and SRS queries) per head")
    model_arguments(p, "run directory or checkpoint.pt (with the SRS module), backbone.safetensors, DINO/timm weights")
    p.add_argument("--image", action="append", required=True,
                   help="an image file or a built-in photo (astronaut, coffee, chelsea); repeat for several")
    p.add_argument("--out", default="viz", help="directory for attention_<image>.png (default: viz)")
    p.add_argument("--points", type=int, default=4, help="SRS query points per image (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the SRS query points")
    p.set_defaults(func=cmd_viz_attention)
    p = viz_sub.add_parser("pca", help="first three principal components of the patch tokens as RGB")
    model_arguments(p, "run directory, backbone.safetensors, checkpoint.pt, or DINO/timm weights")
    p.add_argument("--images", nargs="+", required=True, help="image files or built-in photos (astronaut, coffee, chelsea)")
    p.add_argument("--out", default="viz", help="directory for pca.png (default: viz)")
    p.add_argument("--threshold", type=float, default=0.5, help="foreground: first component (scaled to [0, 1]) above this")
    p.add_argument("--no-mask", action="store_true", help="keep every patch (no foreground threshold)")
    p.set_defaults(func=cmd_viz_pca)
    p = viz_sub.add_parser("curves", help="training curves of RUN_DIR/log.jsonl as one PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")
    p.set_defaults(func=cmd_viz_curves)

    from udi.eval.embed import EMBED_FEATURES

    p = sub.add_parser("embed", help="embeddings of every image of a data set to .npy (+ .jsonl image names)")
    model_arguments(p, "run directory, backbone.safetensors, checkpoint.pt, or DINO/timm weights")
    p.add_argument("--data", required=True, help="built-in name (scenes, mnist5k, digits) or a folder of images")
    p.add_argument("--features", default="cls", help=f"one of {', '.join(EMBED_FEATURES)}, lastN (default cls); "
                   "patch: (images, patches, dim)")
    p.add_argument("--out", required=True, help="FILE.npy; the image names go to FILE.jsonl (one JSON string per row)")
    p.add_argument("--split", default="all", choices=("all", "train", "val"),
                   help="all (default), or the train/ or val/ subfolder (built-ins: their fixed split)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, help="decoding processes (default: 0 for built-ins, up to 8 for folders)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("report", help="one HTML page: config, curves, evaluation, attention maps, patch PCA")
    p.add_argument("run_dir")
    p.add_argument("--data", help="data set whose images are shown (default: the run's; built-in photos if too small)")
    p.add_argument("--out", help="HTML path (default: RUN_DIR/report.html)")
    p.add_argument("--image-size", type=int, help="model input size for the pictures (default: its training size)")
    p.add_argument("--points", type=int, default=4, help="SRS query points per image (default 4)")
    p.add_argument("--eval", metavar="PROTOCOLS",
                   help="when RUN_DIR has no evaluation results, first run these protocols (e.g. knn,lowshot) "
                        "on --data into RUN_DIR/eval")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_report)

    shards = sub.add_parser("shards", help="WebDataset .tar shards of a folder, for data.shards (many nodes)")
    shards_sub = shards.add_subparsers(dest="action", required=True)
    p = shards_sub.add_parser("make", help="write the images of FOLDER to OUT/shard-000000.tar, ... in the folder's "
                                           "order (original bytes, labels in cls, class names in OUT/classes.json)")
    p.add_argument("folder", help="a folder of images (ImageFolder layout or flat/recursive), as data.path")
    p.add_argument("out", help="output folder: new or empty")
    p.add_argument("--shard-size", type=int, required=True, metavar="N", help="images per shard")
    p.add_argument("--split", default="train", choices=("train", "val", "all"),
                   help="train (default: FOLDER/train where it exists, else FOLDER, as pretraining on "
                        "data.path=FOLDER reads), val, or all of FOLDER")
    p.set_defaults(func=cmd_shards_make)
    p = shards_sub.add_parser("index", help="write the index beside each shard (make does it), so that start-up "
                                            "reads no tar header: shards made elsewhere, or copied without mtimes")
    p.add_argument("shards", help="a shard, or a brace pattern as data.shards")
    p.set_defaults(func=cmd_shards_index)
    return parser


def pos_interp_argument(p) -> None:
    p.add_argument("--pos-interp", choices=("bicubic", "dino", "timm"),
                   help="positional-embedding resizing off the native grid (default: the weights' own, bicubic "
                        "unless recorded; dino / timm: as their published models)")


def _interrupted(args) -> str:
    """The line for a Ctrl-C outside the training loop's own handling (start-up, a second Ctrl-C
    while the checkpoint is written, an evaluation): where a run can resume from."""
    if getattr(args, "command", None) != "pretrain":
        return "interrupted"
    checkpoint = Path(args.out) / "checkpoint.pt"
    if not checkpoint.is_file():
        return "interrupted before the first checkpoint; rerun the same command to start again"
    try:  # mmap: reads the step, not the whole file
        step = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["step"]
    except Exception:  # noqa: BLE001 - a damaged file: say so, do not fail again
        return f"interrupted; {checkpoint} could not be read"
    return f"interrupted; the last checkpoint is step {step} ({checkpoint}); rerun the same command to resume"


def main(argv: list[str] | None = None) -> int:
    """Each user mistake ends as one ``error:`` line and a non-zero exit; ``--debug`` (anywhere on the
    line) shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return args.func(args)
    except TrainingStopped as stopped:  # SIGINT / SIGTERM in the training loop, after its checkpoint
        if debug:
            raise
        console.print(f"[yellow]{escape(str(stopped))}[/yellow]")
        return 128 + stopped.signum if stopped.signum else 1
    except KeyboardInterrupt:
        if debug:
            raise
        console.print(f"[yellow]{escape(_interrupted(args))}[/yellow]")
        return 130
    except (ConfigError, OSError, ValueError, FloatingPointError) as error:  # OSError: a missing file, a full disk; FloatingPointError: a NaN loss
        if debug:
            raise
        console.print(f"[red]error:[/red] {escape(str(error))}")
        return 2
    except Exception as error:  # noqa: BLE001 - not a known user mistake: one line still, the traceback on request
        if debug:
            raise
        console.print(f"[red]error:[/red] {escape(f'{type(error).__name__}: {error}')} "
                      "(unexpected: rerun with --debug for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
