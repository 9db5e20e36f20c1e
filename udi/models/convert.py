"""Convert published ViT weights (DINO or timm layout) to a ``udi`` VisionTransformer.

Both layouts already use our parameter names (``cls_token``, ``pos_embed``,
``patch_embed.proj.*``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm.*``). The conversion:

1. finds the backbone inside the file: a plain state dict, or one nested under ``teacher``,
   ``model``, ``state_dict`` or ``module`` (DINO training checkpoints keep the teacher under
   ``teacher`` with a ``backbone.`` prefix);
2. strips the prefixes ``module.`` and ``backbone.``;
3. drops what is not backbone: DINO's projection ``head.*``, timm's classifier ``head.*``
   and an identity ``fc_norm``;
4. reads the architecture off the shapes: embed dim, depth, patch size, MLP ratio,
   qkv bias, number of class tokens, image size (from the positional grid). The number of
   heads is not in the shapes: ``num_heads`` if given, else read from the file's metadata
   (``num_heads``, or an architecture name such as DINO's ``args.arch`` = ``vit_small`` or
   timm's ``vit_small_patch16_224``), else the published convention for the standard widths
   (192, 384, 768, 1024: ViT-T/S/B/L, embed_dim / 64); any other width is an error asking for
   ``num_heads`` (a guess would build a different network without a word);
5. timm models without a class slot in ``pos_embed`` (``no_embed_class``) get a zero slot,
   which computes the same function.

Unsupported variants (register tokens, layer scale, q/k norm, ...) are a clear error.
"""

from __future__ import annotations

import math

import torch

from udi.models.vit import VisionTransformer

NESTED_KEYS = ("teacher", "model", "state_dict", "module")
PREFIXES = ("module.", "backbone.", "encoder.")
DROPPED = ("head.", "fc_norm.", "head_drop.")
# Heads of the published ViT families, by name (DINO's args.arch, timm's model names) and by width.
FAMILY_HEADS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12, "vit_large": 16, "vit_huge": 16}
STANDARD_WIDTH_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16}


def heads_from_metadata(metadata: dict | None) -> int | None:
    """The head count a file states: a ``num_heads`` entry, or an architecture name
    (``arch``/``architecture``/``model_name``) of a known family; None if it states none."""
    if not metadata:
        return None
    value = metadata.get("num_heads")
    if value is not None:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"metadata num_heads={value!r} is not an integer") from None
    for key in ("arch", "architecture", "model_name"):
        name = metadata.get(key)
        if isinstance(name, str):
            for family, heads in FAMILY_HEADS.items():
                if name == family or name.startswith(family + "_"):
                    return heads
    return None


def file_metadata(obj: dict) -> dict:
    """What a checkpoint says about its architecture: DINO's ``args`` (an argparse.Namespace or a
    dict), else top-level ``arch``/``num_heads`` entries."""
    args = obj.get("args")
    if args is not None and not isinstance(args, dict):
        args = vars(args) if hasattr(args, "__dict__") else None
    if isinstance(args, dict):
        return args
    return {k: obj[k] for k in ("arch", "architecture", "num_heads") if k in obj}


def find_state_dict(obj: dict) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint (see module doc, step 1)."""
    if any(isinstance(v, torch.Tensor) for v in obj.values()) and "cls_token" in "".join(obj):
        return obj
    for key in NESTED_KEYS:
        if isinstance(obj.get(key), dict):
            return find_state_dict(obj[key])
    raise ValueError(f"no ViT state dict found (top-level keys: {sorted(obj)[:10]})")


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        if not key.startswith(DROPPED):
            out[key] = value
    return out


def convert_state_dict(obj: dict, num_heads: int | None = None,
                       metadata: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(our state dict, arch config for ``vit_from_config``) from a DINO/timm checkpoint dict;
    ``metadata``: what the file says beside the tensors (safetensors metadata, a config.json)."""
    state = _strip(find_state_dict(obj))
    unknown = sorted({k.split(".")[2] if k.startswith("blocks.") else k.split(".")[0] for k in state}
                     - {"cls_token", "pos_embed", "patch_embed", "blocks", "norm", "norm1", "attn", "norm2", "mlp"})
    if unknown:
        raise ValueError(f"unsupported ViT variant: parameters {unknown} have no counterpart in udi's ViT")
    cls_token, patch_weight = state["cls_token"], state["patch_embed.proj.weight"]
    embed_dim, n_cls, patch_size = cls_token.shape[-1], cls_token.shape[1], patch_weight.shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    pos_embed = state["pos_embed"]
    n_pos = pos_embed.shape[1]
    grid = math.isqrt(n_pos - n_cls)
    if grid * grid != n_pos - n_cls:
        grid = math.isqrt(n_pos)
        if grid * grid != n_pos:
            raise ValueError(f"pos_embed of {n_pos} positions is not a square grid (with or without class slots)")
        # timm "no_embed_class": positions for patches only; a zero slot per class token is equivalent.
        state["pos_embed"] = torch.cat([pos_embed.new_zeros(1, n_cls, embed_dim), pos_embed], dim=1)
    heads = num_heads or heads_from_metadata(metadata) or heads_from_metadata(file_metadata(obj)) \
        or STANDARD_WIDTH_HEADS.get(embed_dim)
    if heads is None:
        raise ValueError(f"the number of attention heads of this {embed_dim}-dim ViT is not in its weights nor in "
                         "its metadata, and its width is not a standard one (192, 384, 768, 1024): "
                         "give it (--num-heads)")
    if embed_dim % heads:
        raise ValueError(f"embed dim {embed_dim} is not divisible by num_heads={heads}; pass num_heads")
    arch = {
        "img_size": grid * patch_size,
        "patch_size": patch_size,
        "in_chans": patch_weight.shape[1],
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "drop_path_rate": 0.0,
        "n_cls": n_cls,
    }
    return state, arch


def load_converted(obj: dict, num_heads: int | None = None, metadata: dict | None = None) -> VisionTransformer:
    from udi.models.vit import vit_from_config

    state, arch = convert_state_dict(obj, num_heads, metadata)
    model = vit_from_config(arch)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"converted weights do not fit: missing {missing}, unexpected {unexpected}")
    return model.eval()
