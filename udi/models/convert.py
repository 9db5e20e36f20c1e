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
   heads is not in the shapes: ``num_heads`` if given, else embed_dim / 64 (true of
   ViT-T/S/B/L);
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


def convert_state_dict(obj: dict, num_heads: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(our state dict, arch config for ``vit_from_config``) from a DINO/timm checkpoint dict."""
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
    heads = num_heads or max(embed_dim // 64, 1)
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


def load_converted(obj: dict, num_heads: int | None = None) -> VisionTransformer:
    from udi.models.vit import vit_from_config

    state, arch = convert_state_dict(obj, num_heads)
    model = vit_from_config(arch)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"converted weights do not fit: missing {missing}, unexpected {unexpected}")
    return model.eval()
