"""Published DINO / timm ViT weights load through the conversion (state dicts built here)."""

import pytest
import torch
from safetensors.torch import save_file

from udi.models.convert import convert_state_dict
from udi.models.pretrained import load_backbone
from udi.models.vit import VisionTransformer


def reference_vit(**kwargs):
    torch.manual_seed(0)
    defaults = dict(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, n_cls=1)  # ViT-T width
    return VisionTransformer(**{**defaults, **kwargs}).eval()


def dino_checkpoint(model):
    """DINO's training checkpoint: teacher and student with prefixes, heads included."""
    teacher = {f"backbone.{k}": v.clone() for k, v in model.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.randn(2048, 192)
    teacher["head.last_layer.weight_g"] = torch.ones(65536, 1)
    student = {f"module.{k}": v for k, v in teacher.items()}
    return {"teacher": teacher, "student": student, "epoch": 100}


def timm_state_dict(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.randn(1000, 192), torch.zeros(1000)
    return state


def test_dino_training_checkpoint(tmp_path):
    model = reference_vit()
    torch.save(dino_checkpoint(model), tmp_path / "dino_checkpoint.pth")
    loaded = load_backbone(tmp_path / "dino_checkpoint.pth")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.forward_features(x), model.forward_features(x))


class MultiCropWrapper(torch.nn.Module):
    """DINO's utils.MultiCropWrapper: the attributes that name its state dict."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head


def main_dino_checkpoint(model):
    """What DINO's main_dino.py writes (its save_dict): the DDP student, the teacher, the
    optimizer, the epoch, ``args`` (an argparse.Namespace) and the loss's state (center)."""
    import argparse

    from udi.models.heads import DINOHead

    teacher = MultiCropWrapper(model, DINOHead(192, 256, hidden_dim=64, bottleneck_dim=32))
    student = torch.nn.Module()
    student.module = MultiCropWrapper(reference_vit(), DINOHead(192, 256, hidden_dim=64, bottleneck_dim=32))
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-4)
    loss = torch.nn.Module()
    loss.register_buffer("center", torch.zeros(1, 256))
    args = argparse.Namespace(arch="vit_tiny", patch_size=8, out_dim=256, norm_last_layer=True, lr=0.0005,
                              data_path="/path/to/imagenet/train", output_dir=".", local_crops_scale=(0.05, 0.4),
                              gpu=0, rank=0, world_size=1, dist_url="env://", seed=0, use_fp16=True)
    return {"student": student.state_dict(), "teacher": teacher.state_dict(), "optimizer": optimizer.state_dict(),
            "epoch": 3, "args": args, "dino_loss": loss.state_dict()}


def test_checkpoint_written_by_main_dino_loads(tmp_path):
    model = reference_vit()
    torch.save(main_dino_checkpoint(model), tmp_path / "checkpoint.pth")
    loaded = load_backbone(tmp_path / "checkpoint.pth")  # before: "Unsupported global: argparse.Namespace"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.forward_features(x), model.forward_features(x))


class NotAllowed:
    pass


def test_only_namespace_is_allowed_beyond_plain_data(tmp_path):
    import argparse

    torch.save({"teacher": {}, "args": argparse.Namespace(hook=NotAllowed())}, tmp_path / "checkpoint.pth")
    with pytest.raises(ValueError, match="NotAllowed"):
        load_backbone(tmp_path / "checkpoint.pth")


def test_dino_backbone_only_file(tmp_path):
    model = reference_vit()
    torch.save(model.state_dict(), tmp_path / "dino_vits8_pretrain.pth")
    assert torch.equal(load_backbone(tmp_path / "dino_vits8_pretrain.pth")(torch.ones(1, 3, 32, 32)),
                       model(torch.ones(1, 3, 32, 32)))


def test_timm_safetensors_with_classifier_head(tmp_path):
    model = reference_vit()
    save_file(timm_state_dict(model), tmp_path / "model.safetensors")
    loaded = load_backbone(tmp_path / "model.safetensors")
    x = torch.randn(1, 3, 48, 48)  # another resolution: interpolated positions
    assert torch.allclose(loaded.forward_features(x), model.forward_features(x))


def test_architecture_read_from_shapes():
    model = reference_vit(img_size=64, patch_size=16, embed_dim=192, num_heads=3, depth=3, mlp_ratio=2.0)
    _, arch = convert_state_dict(timm_state_dict(model))
    assert arch == {"img_size": 64, "patch_size": 16, "in_chans": 3, "embed_dim": 192, "depth": 3, "num_heads": 3,
                    "mlp_ratio": 2.0, "qkv_bias": True, "drop_path_rate": 0.0, "n_cls": 1}
    assert convert_state_dict(timm_state_dict(model), num_heads=6)[1]["num_heads"] == 6


def test_timm_no_embed_class_positions_get_a_zero_class_slot():
    model = reference_vit()
    state = timm_state_dict(model)
    with torch.no_grad():
        model.pos_embed[:, :1] = 0  # what "no class slot" means
    state["pos_embed"] = model.pos_embed[:, 1:].clone()
    converted, _ = convert_state_dict(state)
    assert torch.equal(converted["pos_embed"], model.pos_embed)


def test_unsupported_variants_and_foreign_files_are_clear_errors(tmp_path):
    state = timm_state_dict(reference_vit())
    state["blocks.0.ls1.gamma"] = torch.ones(192)
    with pytest.raises(ValueError, match="unsupported ViT variant.*ls1"):
        convert_state_dict(state)
    torch.save({"weights": torch.ones(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a udi file and not a DINO/timm ViT checkpoint"):
        load_backbone(tmp_path / "other.pth")


def odd_width_vit():
    """48 dims, 3 heads: a width whose head count embed_dim / 64 would get wrong (1)."""
    return reference_vit(embed_dim=48, num_heads=3)


def test_head_count_of_an_odd_width_is_never_guessed(tmp_path):
    model = odd_width_vit()
    torch.save(model.state_dict(), tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="48-dim ViT .* give it \\(--num-heads\\)"):  # before: built with 1 head
        load_backbone(tmp_path / "odd.pth")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(load_backbone(tmp_path / "odd.pth", num_heads=3)(x), model(x), atol=1e-6)


def test_head_count_is_read_from_the_files_metadata(tmp_path):
    import argparse
    import json

    model, x = odd_width_vit(), torch.randn(2, 3, 32, 32)
    save_file(model.state_dict(), tmp_path / "meta.safetensors", metadata={"num_heads": "3"})
    torch.save({"teacher": model.state_dict(), "args": argparse.Namespace(num_heads=3)}, tmp_path / "args.pth")
    hub = tmp_path / "hub"
    hub.mkdir()
    save_file(model.state_dict(), hub / "model.safetensors")
    (hub / "config.json").write_text(json.dumps({"architecture": "custom_vit", "model_args": {"num_heads": 3}}))
    for path in (tmp_path / "meta.safetensors", tmp_path / "args.pth", hub / "model.safetensors"):
        loaded = load_backbone(path)
        assert loaded.num_heads == 3 and torch.allclose(loaded(x), model(x), atol=1e-6), path


def test_head_count_from_a_family_name():
    import argparse

    model = reference_vit()
    dino = {"teacher": model.state_dict(), "args": argparse.Namespace(arch="vit_small")}
    assert convert_state_dict(dino)[1]["num_heads"] == 6  # what the file says wins over the width's convention
    assert convert_state_dict(dino, num_heads=3)[1]["num_heads"] == 3  # and an explicit count over both
    assert convert_state_dict(model.state_dict(), metadata={"architecture": "vit_tiny_patch16_224"})[1]["num_heads"] == 3
