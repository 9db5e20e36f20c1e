"""Load a backbone from a file a user points at: safely, with a clear error otherwise.

Accepted: a run directory (its ``backbone.safetensors``), a ``.safetensors`` file written by
``udi`` (architecture in the metadata), or a ``checkpoint.pt`` of a run (its teacher backbone,
read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
from pathlib import Path


from udi.models.vit import VisionTransformer, vit_from_config
from udi.train.checkpoint import BACKBONE_FORMAT, load_checkpoint, read_backbone_file


def load_backbone(path: str | Path) -> VisionTransformer:
    """A ``VisionTransformer`` in eval mode with the weights of ``path`` (see module doc)."""
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
            raise ValueError(f"{path}: not a udi backbone file (metadata format {metadata.get('format')!r})")
        model = vit_from_config(json.loads(metadata["arch"]))
    else:
        checkpoint = load_checkpoint(path)
        if "teacher" not in checkpoint or "config" not in checkpoint:
            raise ValueError(f"{path}: not a udi training checkpoint (expected 'teacher' and 'config' entries)")
        from udi.models.network import build_network  # the run's own architecture

        model = build_network(checkpoint["config"]).backbone
        prefix = "backbone."
        state = {k[len(prefix):]: v for k, v in checkpoint["teacher"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the architecture (missing {missing}, unexpected {unexpected})")
    return model.eval()
