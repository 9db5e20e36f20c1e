"""Configuration: defaults, then a YAML file, then ``key=value`` overrides.

A config is a nested dict. ``DEFAULTS`` names every key that exists; a YAML
file or an override that names an unknown key is an error (a typo must not be
silently ignored). Values from the command line are parsed as YAML scalars, so
``train.lr=1e-3`` is a float and ``views.shift=false`` a bool.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "method": "udi",  # udi | dino | bootleg
    "data": {
        "name": None,  # built-in: scenes | mnist5k | digits
        "path": None,  # a folder of images (ImageFolder layout or flat/recursive)
        # WebDataset .tar shards (training only): a path, a brace pattern "out/shard-{000000..000009}.tar" or a
        # list of them, e.g. written by `udi shards make FOLDER OUT`; items in order equal the folder's
        "shards": None,
        "canvas_size": 256,  # folders, data.crops canvas: every image is resized to this square canvas
        # Where training crops are cut: "full" = from the full-resolution image with an antialiased bicubic
        # resize, in the data loader (the reference's pixels; udi.data.crops); "canvas" = from the square
        # canvas, on the device (cheap; exact for images no larger than it); "auto" = full for folders and
        # shards with udi/dino, canvas for the built-in data sets (stored at their native size) and bootleg.
        "crops": "auto",
        "scenes_size": 32,
        "scenes_num_images": None,  # None: 10000 train / 2000 val
        "num_workers": 2,
        "max_fail_fraction": 0.01,
        # Folders: an image that would decode to more pixels (after JPEG's reduced decoding) is skipped
        # and named like an undecodable one (PIL's limit; at most twice it, where PIL refuses).
        "max_image_pixels": 89_478_485,
    },
    "model": {
        "arch": "vit_small",
        "patch_size": 16,
        "stem": "patch",  # patch (one stride-p convolution, ViT/DINO) | conv (stride-2 3x3 convolutions)
        # Positional-embedding resizing for non-native grids (local crops, other eval sizes): bicubic |
        # dino (DINO's +0.1 scale factor) | timm (antialiased); udi.models.vit.VisionTransformer says how.
        "pos_interp": "bicubic",
        "drop_path_rate": 0.1,
        "embed_dim": None,  # None: the preset's
        "depth": None,
        "num_heads": None,
    },
    "head": {
        "out_dim": 65536,
        "hidden_dim": 2048,
        "bottleneck_dim": 256,
        "nlayers": 3,
        "norm_last_layer": False,
        "shared": True,  # one head for cls, cls+ and patch (False: separate heads, ablation)
    },
    "views": {
        "global_size": 224,
        "local_size": 96,
        "n_local": 10,
        "global_scale": [0.25, 1.0],
        "local_scale": [0.05, 0.25],
        "global_window": 3,
        "local_window": 2,
        "srs_mode": "random",  # random | uniform | dense
        "shift": True,
        "photometric": True,
        "blur_sigma": [0.1, 2.0],  # Gaussian blur sigma range in pixels of the crop (DINO: for 224 px)
        "color_jitter": [0.4, 0.4, 0.2, 0.1],  # brightness, contrast, saturation, hue (hue: fraction of the circle)
        "color_jitter_p": 0.8,
        "grayscale_p": 0.2,
        "solarize_p": 0.2,
        # Colour-augmentation strength ramp (jitter magnitudes and the jitter, grayscale and solarise
        # probabilities scaled by s): s = photometric_ramp_start at epoch 0, linearly to 1 at epoch
        # photometric_ramp_epochs. 0 = off (full strength throughout, DINO).
        "photometric_ramp_epochs": 0,
        "photometric_ramp_start": 0.0,
    },
    "udi": {
        "extra_token": True,  # the second class token [cls+] and its level
        "patch_level": True,  # the SRS patch level
        "alpha": 0.5,  # weight of the patch profile in the [cls+] target
        "srs_heads": None,  # None: the backbone's number of heads
    },
    "bootleg": {  # method: bootleg (docs/methods.md section 5); model.* is the encoder, views.global_size its crop
        "target_layers": "auto",  # "auto": blocks at depths L/4, L/2, 3L/4, L; or a list of 0-based block indices
        "predictor_depth": 6,
        "predictor_dim": None,  # None: half the encoder's width
        "predictor_heads": None,  # None: the encoder's number of heads
        "loss": "smooth_l1",  # smooth_l1 | mse | l1
        "n_targets": 4,  # target blocks per image
        "target_scale": [0.15, 0.2],  # area of a target block / image
        "target_aspect": [0.75, 1.5],  # height / width of a target block
        "context_scale": [0.85, 1.0],  # area of the context block / image (square), before removing the targets
        "min_context": 10,  # context patches an image must keep (else the targets are excluded one fewer at a time)
        "crop_scale": [0.3, 1.0],  # random resized crop area (I-JEPA)
        "flip": True,  # horizontal flip with probability 0.5
    },
    "loss": {
        "student_temp": 0.1,
        "teacher_temp": 0.07,
        "warmup_teacher_temp": 0.04,
        "warmup_teacher_temp_epochs": 30,
        "center_momentum": 0.9,
        # How teacher logits become targets: "center" (DINO/UDI, docs/methods.md) or "sinkhorn"
        # (Sinkhorn-Knopp balancing as in SwAV/DINOv2: no collapse to one prototype, so a
        # short run can use a sharp teacher; see udi/configs/udi_cpu_demo.yaml).
        "centering": "center",
        "sinkhorn_iters": 3,
        # KoLeo (DINOv2) on the student's normed [cls] of each global view, added to the loss with
        # this weight (DINOv2: 0.1); 0 = off, docs/methods.md's loss.
        "koleo_weight": 0.0,
    },
    "optim": {
        "lr": 5e-4,  # per 256 images of global batch
        "min_lr": 1e-5,
        "warmup_epochs": 10,
        "weight_decay": 0.04,
        "weight_decay_end": 0.1,
        "momentum_teacher": 0.996,
        # EMA momentum at the last step (cosine from momentum_teacher; DINO: 1). Below 1 keeps a short
        # run's teacher moving to the end instead of freezing it for its last fifth.
        "momentum_teacher_end": 1.0,
        "clip_grad": 3.0,
        "freeze_last_layer": 1,  # epochs
    },
    "train": {
        "batch_size": 64,  # per process
        "epochs": 100,
        "max_steps": None,  # stop after this many optimiser steps in total
        "seed": 0,
        "device": "auto",  # auto | cpu | cuda
        "precision": "fp32",  # fp32 | bf16 | fp16
        "compile": False,
        "checkpoint_every": 500,  # steps; also at each epoch end
        # Keep a copy of every N-th epoch's checkpoint (RUN_DIR/checkpoint_epoch0004.pt, ...) besides the
        # latest checkpoint.pt; 0 = off.
        "keep_checkpoints": 0,
        "log_every": 10,  # steps between log.jsonl records and train.log's text lines
        "progress": True,  # the progress bar (in a terminal; elsewhere train.log's lines go to stdout)
        "tensorboard": True,  # TensorBoard event files in RUN_DIR/tb with log.jsonl's scalars (the tensorboard package)
        # CPU training: glibc keeps freed memory for reuse instead of unmapping large blocks (udi.train.cpu_memory;
        # a ViT-S/16 UDI step at K = 65536: 5.8 -> 4.6 s of CPU time); memory returns to the system at exit.
        "retain_cpu_memory": True,
        "eval_every": 0,  # steps between online k-NN evaluations of the teacher (0: off); also at the last step
        "eval_data": None,  # their labelled data: a built-in name or a folder with train/ and val/ (None: data.name)
        "eval_images": 2000,  # images of each split used by the online k-NN (a fixed random subset)
        "dist_timeout": 1800,  # seconds a process waits for the others (a hung rank) before it stops with an error
    },
    "eval": {
        "knn_k": [10, 20, 100, 200],
        "knn_temperature": 0.07,
        "image_size": None,  # None: views.global_size
        "batch_size": 256,
    },
}

CHOICES = {
    "method": ("udi", "dino", "bootleg"),
    "model.stem": ("patch", "conv"),
    "data.crops": ("auto", "canvas", "full"),
    "model.pos_interp": ("bicubic", "dino", "timm"),
    "bootleg.loss": ("smooth_l1", "mse", "l1"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "views.srs_mode": ("random", "uniform", "dense"),
    "loss.centering": ("center", "sinkhorn"),
}


class ConfigError(ValueError):
    """A config file or override that names an unknown key or a bad value."""


def did_you_mean(word: str, options) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options`` to a mistyped ``word``, else ""."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    """Every key of ``tree`` as ``a.b``, sections included."""
    keys = []
    for key, value in tree.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def _unknown_key(source: str, dotted: str) -> ConfigError:
    return ConfigError(f"{source}: unknown config key '{dotted}'{did_you_mean(dotted, _dotted_keys(DEFAULTS))}")


def _coerce(default: Any, value: Any, key: str, source: str) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string: parse numbers for numeric keys, refuse other strings."""
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if numeric and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{source}: '{key}' must be a number; got {value!r}") from None
        return int(number) if isinstance(default, int) and number.is_integer() else number
    return value


def _merge(base: dict, update: dict, source: str, prefix: str = "") -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise _unknown_key(source, dotted)
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' must be a mapping of keys, got {value!r}")
            _merge(base[key], value, source, dotted + ".")
        else:
            base[key] = _coerce(base[key], value, dotted, source)


def set_key(cfg: dict, dotted: str, value: Any, source: str = "override") -> None:
    """Set ``cfg['a']['b'] = value`` for ``dotted == 'a.b'``; the key must exist."""
    node = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise _unknown_key(source, dotted)
        node = node[part]
    if parts[-1] not in node or isinstance(node[parts[-1]], dict):
        raise _unknown_key(source, dotted)
    node[parts[-1]] = _coerce(node[parts[-1]], value, dotted, source)


def get_key(cfg: dict, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


# Keys a run may change when it resumes from its checkpoint: they say how long it goes on, what it
# reports, how and where it runs, not which weights its steps produce. Any other key that differs
# from the checkpoint's config changes the training trajectory (the schedules, the data, the
# randomness, the networks): resuming with it is an error naming each key, old and new value,
# unless ``udi pretrain --allow-changes`` (then recorded in RUN_DIR/train.log). A name without a
# dot is a whole section.
RESUME_FREE_KEYS = (
    "train.max_steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.progress",
    "train.eval_every", "train.eval_data", "train.eval_images", "train.tensorboard", "train.retain_cpu_memory",
    "train.dist_timeout", "train.device", "train.compile", "data.num_workers", "data.max_fail_fraction", "eval",
)


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_ABSENT = object()
# Keys added after runs were started whose default does what those runs did not: what they did.
# (Before data.crops, every crop was cut from the canvas; its default "auto" now means full-resolution
# crops for folders.)
LEGACY_VALUES = {"data.crops": "canvas"}


def resume_changes(saved: dict, cfg: dict) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for each key of ``cfg`` that alters the trajectory and differs from the
    checkpoint's config ``saved``, sorted. A key ``saved`` lacks (added in a later version) counts
    as its default there (or as ``LEGACY_VALUES`` says): unchanged when ``cfg`` keeps it. Keys of
    ``saved`` that no longer exist are ignored, and so are ``RESUME_FREE_KEYS``."""
    old, defaults = flatten(saved), flatten(DEFAULTS)
    changes = []
    for key, value in flatten(cfg).items():
        if key in RESUME_FREE_KEYS or key.split(".")[0] in RESUME_FREE_KEYS:
            continue
        before = old.get(key, _ABSENT)
        if before is _ABSENT:
            before = LEGACY_VALUES.get(key, defaults.get(key))
        if key == "data.crops":  # what they resolve to: "auto" is canvas or full by data and method
            resolved = [crop_mode({**cfg, "data": {**cfg["data"], "crops": v}}) for v in (before, value)]
            if resolved[0] == resolved[1]:
                continue
        if before != value:
            changes.append((key, before, value))
    return sorted(changes)


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    """``a different 'optim' config (optim.lr 0.0005 -> 0.1) and a different 'train' config (...)``."""
    sections: dict[str, list[str]] = {}
    for key, old, new in changes:
        sections.setdefault(key.split(".")[0], []).append(f"{key} {show_value(old)} -> {show_value(new)}")
    return " and ".join(f"a different '{section}' config ({', '.join(items)})" for section, items in sections.items())


def show_value(value: Any) -> str:
    """A config value as it is written on the command line (``null``, ``true``, ``[0.25, 1.0]``)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "views.shift=false"]`` -> ``{"train.lr": 0.001, ...}``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = _safe_yaml(raw, f"override '{item}'") if raw.strip() else None
    return out


def _safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` with its errors (syntax, a tab indent, a ``!!python/...`` tag, which
    the safe loader refuses) as one ConfigError naming ``source`` and the line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        if isinstance(error, yaml.constructor.ConstructorError):
            problem += " (only plain YAML values are allowed: no !!python tags)"
        raise ConfigError(f"{source}:{where} not valid YAML: {problem}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> dict:
    """Defaults, then the YAML file at ``path``, then the overrides; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = _safe_yaml(path.read_text(), str(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
        _merge(cfg, loaded, str(path))
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for key, value in (overrides or {}).items():
        set_key(cfg, key, value)
    validate(cfg)
    return cfg


# Numbers that pass the type check but break training (division by zero, an empty head, NaN at
# step 1, a negative learning rate): (key, integer?, lowest, lowest allowed?, highest or None).
RANGES = [
    ("model.patch_size", True, 1, True, None), ("head.out_dim", True, 1, True, None),
    ("head.hidden_dim", True, 1, True, None), ("head.bottleneck_dim", True, 1, True, None),
    ("head.nlayers", True, 1, True, None), ("views.global_size", True, 1, True, None),
    ("views.local_size", True, 1, True, None), ("views.n_local", True, 0, True, None),
    ("views.global_window", True, 1, True, None), ("views.local_window", True, 1, True, None),
    ("loss.student_temp", False, 0, False, None), ("loss.teacher_temp", False, 0, False, None),
    ("loss.warmup_teacher_temp", False, 0, False, None), ("loss.warmup_teacher_temp_epochs", True, 0, True, None),
    ("loss.center_momentum", False, 0, True, 1), ("optim.lr", False, 0, False, None),
    ("optim.min_lr", False, 0, True, None), ("optim.warmup_epochs", True, 0, True, None),
    ("optim.weight_decay", False, 0, True, None), ("optim.weight_decay_end", False, 0, True, None),
    ("optim.clip_grad", False, 0, True, None), ("optim.freeze_last_layer", True, 0, True, None),
    ("model.drop_path_rate", False, 0, True, 1), ("train.dist_timeout", False, 0, False, None), ("data.max_image_pixels", True, 1, True, 2 * 89_478_485),
    ("train.keep_checkpoints", True, 0, True, None),
]


def _validate_ranges(cfg: dict) -> None:
    for key, integer, low, inclusive, high in RANGES:
        value = get_key(cfg, key)
        kind = "an integer" if integer else "a number"
        ok_type = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
        above = ok_type and (value >= low if inclusive else value > low)
        if not (above and (high is None or value <= high)):
            bound = f"{'>=' if inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
            raise ConfigError(f"'{key}' must be {kind} {bound}; got {value!r}")
    for key in ("views.global_scale", "views.local_scale"):
        pair = get_key(cfg, key)
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair)
                and 0 < pair[0] <= pair[1] <= 1):
            raise ConfigError(f"'{key}' must be [low, high] with 0 < low <= high <= 1; got {pair!r}")


def validate(cfg: dict) -> None:
    _validate_ranges(cfg)
    for key, allowed in CHOICES.items():
        value = get_key(cfg, key)
        if value not in allowed:
            raise ConfigError(f"'{key}' must be one of {', '.join(allowed)}; got {value!r}{did_you_mean(value, allowed)}")
    data = cfg["data"]
    if sum(data[key] is not None for key in ("name", "path", "shards")) != 1:
        raise ConfigError("set exactly one of 'data.name' (a built-in data set), 'data.path' (a folder) "
                          "or 'data.shards' (WebDataset .tar shards)")
    if data["crops"] == "full" and data["name"] is not None:
        raise ConfigError(f"'data.crops: full' cuts crops from image files (data.path or data.shards); the built-in "
                          f"data set {data['name']!r} is stored at its native size: use data.crops=canvas or auto")
    if data["crops"] == "full" and cfg["method"] == "bootleg":
        raise ConfigError("'data.crops: full' is not implemented for method bootleg (its single crop is cut from the "
                          "canvas): use data.crops=canvas or auto")
    shards = data["shards"]
    if shards is not None and not (isinstance(shards, str) and shards or isinstance(shards, list) and shards
                                   and all(isinstance(s, str) and s for s in shards)):
        raise ConfigError(f"'data.shards' must be a path, a brace pattern or a non-empty list of paths; got {shards!r}")
    for key in ("train.batch_size", "train.epochs", "train.checkpoint_every", "train.log_every"):
        value = get_key(cfg, key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"'{key}' must be a positive integer; got {value!r}")
    for key in ("train.eval_every", "train.eval_images"):
        value = get_key(cfg, key)
        least = 0 if key == "train.eval_every" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"'{key}' must be an integer >= {least}; got {value!r}")
    ramp = cfg["views"]["photometric_ramp_epochs"]
    if not isinstance(ramp, int) or isinstance(ramp, bool) or ramp < 0:
        raise ConfigError(f"'views.photometric_ramp_epochs' must be an integer >= 0; got {ramp!r}")
    start = cfg["views"]["photometric_ramp_start"]
    if not isinstance(start, (int, float)) or isinstance(start, bool) or not 0 <= start <= 1:
        raise ConfigError(f"'views.photometric_ramp_start' must be a number in [0, 1]; got {start!r}")
    koleo = cfg["loss"]["koleo_weight"]
    if not isinstance(koleo, (int, float)) or isinstance(koleo, bool) or koleo < 0:
        raise ConfigError(f"'loss.koleo_weight' must be a number >= 0; got {koleo!r}")
    for key in ("momentum_teacher", "momentum_teacher_end"):
        value = cfg["optim"][key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ConfigError(f"'optim.{key}' must be a number in [0, 1]; got {value!r}")
    max_steps = cfg["train"]["max_steps"]
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ConfigError(f"'train.max_steps' must be a positive integer or null; got {max_steps!r}")
    views = cfg["views"]
    for key in ("global_size", "local_size"):
        if views[key] % cfg["model"]["patch_size"]:
            raise ConfigError(
                f"'views.{key}' ({views[key]}) must be divisible by 'model.patch_size' ({cfg['model']['patch_size']})"
            )
    patch = cfg["model"]["patch_size"]
    if cfg["model"]["stem"] == "conv" and (patch < 2 or patch & (patch - 1)):
        raise ConfigError(f"'model.stem' conv needs a 'model.patch_size' that is a power of 2 (>= 2); got {patch}")
    jitter = views["color_jitter"]
    if not (isinstance(jitter, list) and len(jitter) == 4 and all(isinstance(j, (int, float)) and j >= 0 for j in jitter)
            and jitter[3] <= 0.5):
        raise ConfigError(
            "'views.color_jitter' must be 4 non-negative numbers [brightness, contrast, saturation, hue] "
            f"with hue <= 0.5; got {jitter!r}"
        )
    for key in ("color_jitter_p", "grayscale_p", "solarize_p"):
        if not 0.0 <= views[key] <= 1.0:
            raise ConfigError(f"'views.{key}' must be a probability in [0, 1]; got {views[key]!r}")
    iters = cfg["loss"]["sinkhorn_iters"]
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise ConfigError(f"'loss.sinkhorn_iters' must be a positive integer; got {iters!r}")
    if not 0.0 <= cfg["udi"]["alpha"] <= 1.0:
        raise ConfigError(f"'udi.alpha' must lie in [0, 1]; got {cfg['udi']['alpha']}")
    _validate_bootleg(cfg)


def _validate_bootleg(cfg: dict) -> None:
    """Types and ranges of ``bootleg.*`` (the block indices are checked against the depth when
    the network is built)."""
    boot = cfg["bootleg"]
    layers = boot["target_layers"]
    if layers != "auto" and not (
        isinstance(layers, list) and layers and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)
        and len(set(layers)) == len(layers)
    ):
        raise ConfigError(
            f"'bootleg.target_layers' must be \"auto\" or a non-empty list of distinct 0-based block indices; got {layers!r}"
        )
    for key in ("predictor_depth", "n_targets", "min_context"):
        if not isinstance(boot[key], int) or isinstance(boot[key], bool) or boot[key] < 1:
            raise ConfigError(f"'bootleg.{key}' must be a positive integer; got {boot[key]!r}")
    for key in ("predictor_dim", "predictor_heads"):
        if boot[key] is not None and (not isinstance(boot[key], int) or isinstance(boot[key], bool) or boot[key] < 1):
            raise ConfigError(f"'bootleg.{key}' must be a positive integer or null; got {boot[key]!r}")
    for key, upper in (("target_scale", 1.0), ("context_scale", 1.0), ("crop_scale", 1.0), ("target_aspect", None)):
        pair = boot[key]
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair)
                and 0 < pair[0] <= pair[1] and (upper is None or pair[1] <= upper)):
            bound = " <= 1" if upper else ""
            raise ConfigError(f"'bootleg.{key}' must be [low, high] with 0 < low <= high{bound}; got {pair!r}")
    if not isinstance(boot["flip"], bool):
        raise ConfigError(f"'bootleg.flip' must be true or false; got {boot['flip']!r}")
    if cfg["method"] == "bootleg":
        from udi.data.masking import MaskSpec

        grid = cfg["views"]["global_size"] // cfg["model"]["patch_size"]
        if grid < 2:
            raise ConfigError(f"method bootleg needs a patch grid of at least 2 x 2; 'views.global_size' / "
                              f"'model.patch_size' gives {grid} x {grid}")
        try:
            MaskSpec(grid, boot["n_targets"], tuple(boot["target_scale"]), tuple(boot["target_aspect"]),
                     tuple(boot["context_scale"]), boot["min_context"])
        except ValueError as error:  # MaskSpec names its field, which is the key in `bootleg`
            raise ConfigError(f"bootleg.{error} (patch grid {grid} x {grid} = 'views.global_size' / "
                              f"'model.patch_size')") from None


def dump_config(cfg: dict, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))


def config_dir() -> Path:
    """The shipped configs: ``udi/configs/`` (package data, installed with the package)."""
    return Path(__file__).resolve().parent / "configs"


def resolve_config_path(name_or_path: str) -> Path:
    """A path as given, or the name of a shipped config (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config {name_or_path} is a folder; expected a YAML file or the name of a shipped config")
    for candidate in (config_dir() / name_or_path, config_dir() / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in config_dir().glob("*.yaml"))
    raise ConfigError(f"config not found: {name_or_path} (shipped configs: {', '.join(shipped)})"
                      f"{did_you_mean(Path(name_or_path).stem, shipped)}")


def crop_mode(cfg: dict) -> str:
    """``data.crops`` resolved: "full" or "canvas" (see DEFAULTS)."""
    mode = cfg["data"]["crops"]
    if mode != "auto":
        return mode
    files = cfg["data"]["name"] is None
    return "full" if files and cfg["method"] in ("udi", "dino") else "canvas"
