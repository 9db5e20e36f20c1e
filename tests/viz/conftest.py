"""Fixtures of the viz tests: a real 2-step UDI run and backbones with constructed attention."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from udi.config import load_config
from udi.models.vit import VisionTransformer, build_vit
from udi.io.checkpoint import export_backbone
from udi.train.loop import pretrain

from ..train.conftest import TINY

GRID = 4  # 16 px input, patch 4
HEAD_DIM = 32  # vit_nano: 96 dims, 3 heads


@pytest.fixture(scope="session")
def tiny_run_template(tmp_path_factory):
    """A 2-step UDI run directory (vit_nano, patch 4, 16 px): config.yaml, log.jsonl, checkpoint.pt, backbone.safetensors."""
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    pretrain(load_config(None, TINY + ["train.max_steps=2"]), run)
    return run


@pytest.fixture
def tiny_run(tiny_run_template, tmp_path):
    """A private copy of the 2-step run (tests may add eval results or reports to it)."""
    return shutil.copytree(tiny_run_template, tmp_path / "run")


def _identity_block(vit: VisionTransformer) -> None:
    """Zero the residual branches of every block, so the last block's input is prepare_tokens(x)."""
    for block in vit.blocks:
        for layer in (block.attn.proj, block.mlp.fc2):
            layer.weight.zero_()
            layer.bias.zero_()


def spotlight_backbone(target: int, n_cls: int = 2) -> VisionTransformer:
    """vit_nano (1 block, 16 px, patch 4) whose every token, in every head, attends only to patch ``target``.

    The image is ignored (zero patch embedding): patch tokens are their positional embeddings,
    direction e_1 for every patch and, for the target, one marker dimension per head
    (e_0 + e_32 + e_64). Every query is the constant bias 20 * (sum of the markers) and the
    keys are the normalised tokens, so the target's score exceeds the others' by about 20.
    """
    vit = build_vit("vit_nano", patch_size=4, img_size=16, n_cls=n_cls, depth=1)
    D = vit.embed_dim
    markers = [h * HEAD_DIM for h in range(vit.num_heads)]
    with torch.no_grad():
        vit.patch_embed.proj.weight.zero_()
        vit.patch_embed.proj.bias.zero_()
        vit.cls_token.zero_()
        vit.cls_token[0, :, 2] = 1.0
        vit.pos_embed.zero_()
        vit.pos_embed[0, n_cls:, 1] = 1.0
        vit.pos_embed[0, n_cls + target] = 0.0
        vit.pos_embed[0, n_cls + target, markers] = 1.0
        qkv = vit.blocks[0].attn.qkv
        qkv.weight.zero_()
        qkv.bias.zero_()
        qkv.bias[markers] = 20.0  # q = constant
        qkv.weight[D:2 * D] = torch.eye(D)  # k = LN(x)
        qkv.weight[2 * D:] = torch.eye(D)  # v = LN(x)
    return vit.eval()


def pattern_backbone(n_cls: int = 2) -> VisionTransformer:
    """vit_nano (1 block, identity residual branches, 16 px, patch 4) whose last-block patch tokens
    are fixed patterns: token j = e_j + e_{32+j} + e_{64+j}, the same shape in every head's slice."""
    vit = build_vit("vit_nano", patch_size=4, img_size=16, n_cls=n_cls, depth=1)
    with torch.no_grad():
        _identity_block(vit)
        vit.patch_embed.proj.weight.zero_()
        vit.patch_embed.proj.bias.zero_()
        vit.pos_embed.zero_()
        for j in range(GRID * GRID):
            vit.pos_embed[0, n_cls + j, [j + h * HEAD_DIM for h in range(vit.num_heads)]] = 1.0
    return vit.eval()


@pytest.fixture
def spotlight_file(tmp_path):
    """(path of an exported spotlight backbone, its target patch)."""
    target = 6  # row 1, column 2
    path = tmp_path / "spotlight.safetensors"
    export_backbone(path, spotlight_backbone(target))
    return path, target


@pytest.fixture
def image_files(tmp_path):
    """Two small RGB PNG files of different aspect ratios."""
    rng = np.random.default_rng(0)
    paths = []
    for name, (h, w) in {"wide": (40, 60), "tall": (50, 30)}.items():
        path = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths
