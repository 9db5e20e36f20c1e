"""The Python API: ``udi.load``, ``udi.pretrain``, ``udi.evaluate`` (re-exported by ``udi``).

>>> import udi
>>> backbone = udi.load("runs/demo")                 # a run directory or any weights udi eval takes
>>> x = backbone.transform(pil_image)                 # (3, S, S): udi eval's preprocessing
>>> z = backbone.embed([pil_image, "photo.jpg"])      # (N, D), the normed [cls]
>>> summary = udi.pretrain("udi_cpu_demo", "runs/x", train__max_steps=2)
>>> metrics = udi.evaluate("runs/x", "digits", protocols=["knn"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from udi.eval.features import eval_crops

PathLike = str | Path


class EvalTransform:
    """PIL image (or an image file's path or bytes) -> normalised (3, S, S) float tensor: the
    evaluation preprocessing of ``udi eval`` / ``udi embed`` on a folder (the centred square of
    ``crop_fraction`` of the shorter side, cut from the full-resolution image and resized to
    ``image_size`` with an antialiased bicubic filter: ``udi.data.crops.CenterCropViews``;
    ImageNet mean/std). A file is decoded as ``udi eval`` decodes it (EXIF orientation; a large
    JPEG at a reduced scale that still spans twice the crop)."""

    def __init__(self, image_size: int, crop_fraction: float = 0.875):
        from udi.data.crops import CenterCropViews

        self.image_size, self.crop_fraction = image_size, crop_fraction
        self.views = CenterCropViews(image_size, crop_fraction)

    def __call__(self, image) -> Tensor:
        if isinstance(image, Image.Image):
            from udi.data.datasets import _to_rgb

            fields = self.views.crop(_to_rgb(ImageOps.exif_transpose(image)))
        else:
            fields = self.views(image)
        return eval_crops(fields["image"][None], torch.tensor([fields["aspect"]]), self.image_size,
                          self.crop_fraction, torch.tensor([True]))[0]

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size}, crop_fraction={self.crop_fraction})"


class Backbone(nn.Module):
    """A udi backbone (a ``udi.models.vit.VisionTransformer``, ``.vit``) with DINO/timm-style
    methods. ``backbone(x)`` is DINO's forward: the normed [cls] (B, D) of a batch (B, 3, H, W).

    Attributes: ``transform`` (the evaluation preprocessing at ``image_size``, the training resolution
    unless given), ``embed_dim``, ``patch_size``, ``depth``, ``num_heads``, ``n_cls``, ``image_size``,
    ``pretrain_method``."""

    def __init__(self, vit: nn.Module, image_size: int | None = None, crop_fraction: float = 0.875):
        super().__init__()
        self.vit = vit.eval()
        self.image_size = image_size or vit.img_size
        if self.image_size % vit.patch_size:
            raise ValueError(f"image size {self.image_size} is not a multiple of the patch size {vit.patch_size}")
        self.transform = EvalTransform(self.image_size, crop_fraction)
        for name in ("embed_dim", "patch_size", "depth", "num_heads", "n_cls"):
            setattr(self, name, getattr(vit, name))
        self.pretrain_method = getattr(vit, "pretrain_method", None)

    @property
    def device(self) -> torch.device:
        return self.vit.cls_token.device

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> normed [cls] (B, D) (DINO's ``forward``)."""
        return self.vit(x)[:, 0]

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> every token after the final norm (B, n_cls + N, D), class tokens first
        (timm's ``forward_features``; ``[:, 0]`` is the [cls] of ``forward``)."""
        return self.vit.forward_features(x)

    def get_intermediate_layers(self, x: Tensor, n: int | Sequence[int] = 1, norm: bool = True) -> list[Tensor]:
        """Outputs (B, n_cls + N, D) of the last ``n`` blocks (an int, as DINO) or of the blocks with
        those 0-based indices (a sequence, as DINOv2), in block order, after the final norm
        (``norm=False``: before it)."""
        indices = list(range(self.depth - n, self.depth)) if isinstance(n, int) else list(n)
        if isinstance(n, int) and not 1 <= n <= self.depth:
            raise ValueError(f"n must lie in 1..{self.depth} (the depth), got {n}")
        return self.vit.forward_intermediates(x, indices, norm=norm)

    def preprocess(self, images) -> Tensor:
        """A list of PIL images (or image paths) -> a normalised batch (N, 3, S, S) via ``transform``;
        a tensor is returned as it is (already preprocessed: (N, 3, H, W) or one (3, H, W))."""
        if isinstance(images, Tensor):
            return images[None] if images.ndim == 3 else images
        if isinstance(images, (Image.Image, str, Path)):
            images = [images]
        return torch.stack([self.transform(image) for image in images])

    @torch.no_grad()
    def embed(self, images, feature: str = "cls", batch_size: int = 64) -> Tensor:
        """Embeddings (N, D) of a list of PIL images (or image paths), or of a preprocessed batch
        tensor (N, 3, H, W), on the CPU in float32: the rows ``udi embed`` writes for the same images
        and ``feature`` (cls, cls+, cls_cat (N, 2D), patch_mean, lastN (N, n D), patch (N, patches, D))."""
        from udi.eval.embed import compute_features, parse_embed_feature

        feature = parse_embed_feature(feature, self.vit)
        if isinstance(images, Tensor):
            chunks = list(self.preprocess(images).split(batch_size))
        else:
            items = [images] if isinstance(images, (Image.Image, str, Path)) else list(images)
            chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        if not chunks:
            raise ValueError("no images to embed")
        return torch.cat([compute_features(self.vit, self.preprocess(chunk).to(self.device), feature).float().cpu()
                          for chunk in chunks])


def load(path: PathLike, image_size: int | None = None, device: str | torch.device = "cpu",
         num_heads: int | None = None, pos_interp: str | None = None) -> Backbone:
    """The backbone of ``path`` (a run directory, ``backbone.safetensors``, ``checkpoint.pt``, or DINO/timm
    ViT weights: whatever ``udi eval --weights`` takes) as a ``Backbone`` on ``device``, in eval mode.
    ``image_size``: the input size of ``transform`` (default: the training resolution)."""
    from udi.models.pretrained import load_backbone

    return Backbone(load_backbone(path, num_heads=num_heads, pos_interp=pos_interp), image_size).to(device)


def _overrides(overrides: dict | None, keywords: dict) -> dict[str, Any]:
    """``{"train.max_steps": 2}`` and ``train__max_steps=2`` -> ``{"train.max_steps": 2}``."""
    merged = dict(overrides or {})
    for key, value in keywords.items():
        merged[key.replace("__", ".")] = value
    return merged


def pretrain(config: PathLike | dict | None, out_dir: PathLike, overrides: dict | None = None, **keywords) -> dict:
    """Pretrain into ``out_dir`` (resuming from its checkpoint, as ``udi pretrain``) and return the
    summary (``step``, ...).

    ``config``: the name of a shipped config (``"udi_cpu_demo"``), a YAML path, a dict of config keys
    (nested ``{"train": {"max_steps": 2}}``, merged over the defaults), or None (the defaults).
    Overrides, applied after it: keyword arguments with ``__`` for the dots
    (``train__max_steps=2``, ``model__arch="vit_small"``), and/or ``overrides={"train.max_steps": 2}``
    (dotted keys, as on the command line); keywords win over the dict."""
    from udi.config import load_config, resolve_config_path
    from udi.train.loop import pretrain as run_pretraining

    dotted = _overrides(overrides, keywords)
    if isinstance(config, dict):
        import copy

        from udi.config import DEFAULTS, _merge, set_key, validate

        cfg = copy.deepcopy(DEFAULTS)
        _merge(cfg, copy.deepcopy(config), "config dict")
        for key, value in dotted.items():
            set_key(cfg, key, value)
        validate(cfg)
    else:
        cfg = load_config(resolve_config_path(str(config)) if config is not None else None, dotted)
    return run_pretraining(cfg, out_dir)


def evaluate(weights: PathLike | Backbone | nn.Module, data: str, protocols: Sequence[str] | None = None,
             features: list[str] | dict[str, list[str]] | None = None, out_dir: PathLike | None = None,
             device: str | torch.device = "auto", progress: bool = False, **options) -> dict:
    """Run the evaluation suite (``udi eval``) and return the metrics dict (what ``metrics.json``
    holds: ``{"knn": {"cls": {...}}, ..., "source": {...}}``).

    ``weights``: a path as ``udi.load`` takes, or a loaded backbone. ``data``: a built-in name or a
    folder with train/ and val/. ``protocols``: default all that ``data`` supports. ``features``: as
    ``udi eval --features`` (a list, or protocol -> list). ``out_dir``: where ``metrics.json`` (rewritten
    after each protocol), ``metrics.md`` and the feature cache go (None: nothing written). ``device``:
    ``auto`` (CUDA when there is one, as ``udi eval``), ``cpu``, ``cuda``...
    ``options``: fields of ``udi.eval.suite.SuiteOptions`` (``max_images=300``, ``linear_epochs=10``,
    ``linear_augment=False``, ...)."""
    from udi.eval.suite import SuiteOptions, check_protocols, run_suite, write_results
    from udi.models.pretrained import load_backbone
    from udi.train.distributed import resolve_device

    protocols = check_protocols(data, list(protocols) if protocols else None)
    path = None
    if isinstance(weights, Backbone):
        backbone = weights.vit
        if weights.image_size != backbone.img_size:
            options.setdefault("image_size", weights.image_size)
    elif isinstance(weights, nn.Module):
        backbone = weights
    else:
        path, backbone = weights, load_backbone(weights)
    suite_options = SuiteOptions(progress=progress, **options)
    out = Path(out_dir) if out_dir is not None else None
    save = (lambda partial: write_results(out / "metrics.json", partial)) if out is not None else None
    results = run_suite(backbone, data, protocols, features, out_dir=out, device=resolve_device(device) if device == "auto" else torch.device(device),
                        options=suite_options, weights=path, on_protocol=save)
    if out is not None:
        from udi.eval.suite import summarize
        from udi.eval.tables import markdown_table

        write_results(out / "metrics.json", results)
        name = Path(path).name if path is not None else "backbone"
        (out / "metrics.md").write_text(markdown_table({name: summarize(results)}))
    return results
