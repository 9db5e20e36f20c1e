"""Load a backbone from a file a user points at: safely, with a clear error otherwise.

Accepted: a run directory (its ``backbone.safetensors``), a ``.safetensors`` file written by
``udi`` (architecture in the metadata), a ``checkpoint.pt`` of a run (its teacher backbone),
or published ViT weights in the DINO or timm layout (``.pth``/``.pt``/``.bin`` or
``.safetensors``), converted at load time by ``udi.models.convert``. Pickled files are read
with ``torch.load(weights_only=True)``: tensors and plain containers only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from udi.models.backbone import build_backbone
from udi.models.convert import load_converted
from udi.models.srs import SRSModule
from udi.models.vit import POS_INTERP, VisionTransformer, vit_from_config
from udi.io.checkpoint import BACKBONE_FORMAT, load_checkpoint, read_backbone_file


def load_backbone(path: str | Path, num_heads: int | None = None, pos_interp: str | None = None) -> VisionTransformer:
    """A ``VisionTransformer`` in eval mode with the weights of ``path`` (see module doc).

    ``pos_interp`` replaces the positional-embedding resizing convention the weights were saved
    with (``bicubic`` unless recorded; ``dino`` reproduces DINO's published models off their
    native grid, ``timm`` timm's).

    ``num_heads`` is needed only for converted weights whose file states no head count and whose
    width is not a standard one (see ``udi.models.convert``)."""
    model = _load_backbone(Path(path), num_heads)
    if pos_interp is not None:
        if pos_interp not in POS_INTERP:
            raise ValueError(f"pos_interp must be one of {', '.join(POS_INTERP)}; got {pos_interp!r}")
        model.pos_interp = pos_interp
    return model


def _load_backbone(path: Path, num_heads: int | None) -> VisionTransformer:
    if path.is_dir():
        candidate = path / "backbone.safetensors"
        if not candidate.exists():
            raise FileNotFoundError(f"{path} is a directory without backbone.safetensors (is it a run directory?)")
        path = candidate
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    if path.suffix == ".safetensors":
        try:
            state, metadata = read_backbone_file(path)
        except Exception as error:  # safetensors' own errors: header too small/large, bad offsets, ...
            raise ValueError(f"{path}: not a readable .safetensors file ({error})") from None
        if metadata.get("format") != BACKBONE_FORMAT:  # e.g. a timm model.safetensors (+ config.json)
            return _converted(state, path, num_heads, {**_config_json(path), **metadata})
        arch = _checked_arch(metadata, state, path)
        model = _load_state(vit_from_config(arch), state, path)
        return _with_method(model, metadata.get("method"))
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a dict of weights "
                         "(expected a state dict, a DINO/timm checkpoint or a udi checkpoint.pt)")
    if not _is_run_checkpoint(checkpoint):
        return _converted(checkpoint, path, num_heads)  # DINO / timm layout
    return _with_method(_teacher_backbone(checkpoint, path), checkpoint["config"].get("method"))


def _checked_arch(metadata: dict, state: dict, path: Path) -> dict:
    """The architecture in a udi file's metadata, checked against the tensors' shapes before
    anything is built (a wrong or hostile header must not make us allocate a huge network)."""
    try:
        arch = json.loads(metadata.get("arch", ""))
    except ValueError:
        arch = None
    if not isinstance(arch, dict):
        raise ValueError(f"{path}: its metadata 'arch' is not an architecture (a JSON object)")
    cls_token = state.get("cls_token")
    if cls_token is None or cls_token.ndim != 3:
        raise ValueError(f"{path}: no (1, n_cls, dim) 'cls_token' tensor")
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)
    actual = {"embed_dim": cls_token.shape[2], "n_cls": cls_token.shape[1], "depth": depth}
    for field, value in actual.items():
        if arch.get(field) != value:
            raise ValueError(f"{path}: its metadata says {field}={arch.get(field)!r} but the weights have {value}")
    with torch.device("meta"):  # shapes only, no memory
        try:
            expected = vit_from_config(arch).state_dict()
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: its metadata 'arch' is not a valid architecture ({error})") from None
    for name, tensor in expected.items():
        if name in state and tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(f"{path}: '{name}' has shape {tuple(state[name].shape)}, its metadata implies "
                             f"{tuple(tensor.shape)}")
    return arch


def _with_method(model: VisionTransformer, method: str | None) -> VisionTransformer:
    """Record the pretraining method (``udi`` | ``dino`` | ``bootleg``) on the backbone, so that
    evaluation can default to its natural feature (``patch_mean`` for Bootleg, which trains no [cls])."""
    model.pretrain_method = method
    return model


def _is_run_checkpoint(checkpoint: dict) -> bool:
    return "teacher" in checkpoint and "config" in checkpoint


def _load_state(model, state: dict, path: Path):
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the architecture (missing {missing}, unexpected {unexpected})")
    return model.eval()


def _teacher_part(checkpoint: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in checkpoint["teacher"].items() if k.startswith(prefix)}


def _teacher_backbone(checkpoint: dict, path: Path) -> VisionTransformer:
    """The teacher backbone of a run's ``checkpoint.pt`` (already loaded): the run's own
    architecture, with as many class tokens as its weights have."""
    state = _teacher_part(checkpoint, "backbone.")
    if "cls_token" not in state:
        raise ValueError(f"{path}: the run checkpoint has no teacher backbone (no 'teacher.backbone.cls_token')")
    model = build_backbone(checkpoint["config"], n_cls=state["cls_token"].shape[1])
    return _load_state(model, state, path)


def _config_json(path: Path) -> dict:
    """The ``config.json`` beside a weights file (Hugging Face / timm hub layout), if any:
    its ``architecture`` names the model family; its ``model_args`` may give ``num_heads``."""
    config = path.with_name("config.json")
    if not config.is_file():
        return {}
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{config}: not readable JSON ({error})") from None
    if not isinstance(data, dict):
        return {}
    model_args = data.get("model_args") if isinstance(data.get("model_args"), dict) else {}
    return {k: v for k, v in {**data, **model_args}.items() if k in ("architecture", "arch", "num_heads")}


def _converted(obj: dict, path: Path, num_heads: int | None, metadata: dict | None = None) -> VisionTransformer:
    try:
        return load_converted(obj, num_heads, metadata)
    except (ValueError, KeyError) as error:
        raise ValueError(f"{path}: not a udi file and not a DINO/timm ViT checkpoint ({error})") from error


def load_backbone_and_srs(path: str | Path, num_heads: int | None = None) -> tuple[VisionTransformer, SRSModule | None]:
    """The teacher backbone and the teacher's SRS module, both in eval mode.

    The SRS module is saved only in a UDI run's ``checkpoint.pt``: for a run directory holding
    one, or that file itself, both come from it (``backbone.safetensors`` is the same teacher
    backbone, written at the same moment). Anything else gives ``(load_backbone(path), None)``,
    and so does a run of a method without an SRS module (DINO).
    """
    path = Path(path)
    checkpoint_path = path / "checkpoint.pt" if path.is_dir() else path
    if checkpoint_path.suffix != ".pt" or not checkpoint_path.is_file():
        return load_backbone(path, num_heads), None
    checkpoint = load_checkpoint(checkpoint_path)
    if not _is_run_checkpoint(checkpoint):
        return _converted(checkpoint, checkpoint_path, num_heads), None
    backbone = _teacher_backbone(checkpoint, checkpoint_path)
    srs_state = _teacher_part(checkpoint, "srs.")
    if not srs_state:
        return backbone, None
    # Head count is not recoverable from the weights: the run's udi.srs_heads, else the backbone's.
    heads = (checkpoint["config"].get("udi") or {}).get("srs_heads") or backbone.num_heads
    srs = SRSModule(srs_state["q.weight"].shape[0], heads)
    try:
        srs.load_state_dict(srs_state)
    except RuntimeError as error:
        raise ValueError(f"{checkpoint_path}: SRS weights do not match the run's config ({error})") from error
    return backbone, srs.eval()
