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


from udi.models.convert import load_converted
from udi.models.vit import VisionTransformer, vit_from_config
from udi.train.checkpoint import BACKBONE_FORMAT, load_checkpoint, read_backbone_file


def load_backbone(path: str | Path, num_heads: int | None = None) -> VisionTransformer:
    """A ``VisionTransformer`` in eval mode with the weights of ``path`` (see module doc).

    ``num_heads`` is needed only for converted weights whose head count is not embed_dim / 64."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "backbone.safetensors"
        if not candidate.exists():
            raise FileNotFoundError(f"{path} is a directory without backbone.safetensors (is it a run directory?)")
        path = candidate
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    if path.suffix == ".safetensors":
        state, metadata = read_backbone_file(path)
        if metadata.get("format") != BACKBONE_FORMAT:
            return _converted(state, path, num_heads)  # e.g. a timm model.safetensors
        model = vit_from_config(json.loads(metadata["arch"]))
    else:
        checkpoint = load_checkpoint(path)
        if "teacher" not in checkpoint or "config" not in checkpoint:
            return _converted(checkpoint, path, num_heads)  # DINO / timm layout
        from udi.models.network import build_network  # the run's own architecture

        model = build_network(checkpoint["config"]).backbone
        prefix = "backbone."
        state = {k[len(prefix):]: v for k, v in checkpoint["teacher"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the architecture (missing {missing}, unexpected {unexpected})")
    return model.eval()


def _converted(obj: dict, path: Path, num_heads: int | None) -> VisionTransformer:
    try:
        return load_converted(obj, num_heads)
    except (ValueError, KeyError) as error:
        raise ValueError(f"{path}: not a udi file and not a DINO/timm ViT checkpoint ({error})") from error
