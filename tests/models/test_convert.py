"""Published DINO / timm ViT weights load through the conversion (state dicts built here)."""

import pytest
import torch
from safetensors.torch import save_file

from udi.models.convert import convert_state_dict
from udi.models.pretrained import load_backbone
from udi.models.vit import VisionTransformer


def reference_vit(**kwargs):
    torch.manual_seed(0)
    defaults = dict(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, n_cls=1)
    return VisionTransformer(**{**defaults, **kwargs}).eval()


def dino_checkpoint(model):
    """DINO's training checkpoint: teacher and student with prefixes, heads included."""
    teacher = {f"backbone.{k}": v.clone() for k, v in model.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.randn(2048, 128)
    teacher["head.last_layer.weight_g"] = torch.ones(65536, 1)
    student = {f"module.{k}": v for k, v in teacher.items()}
    return {"teacher": teacher, "student": student, "epoch": 100}


def timm_state_dict(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.randn(1000, 128), torch.zeros(1000)
    return state


def test_dino_training_checkpoint(tmp_path):
    model = reference_vit()
    torch.save(dino_checkpoint(model), tmp_path / "dino_checkpoint.pth")
    loaded = load_backbone(tmp_path / "dino_checkpoint.pth")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.forward_features(x), model.forward_features(x))


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
    state["blocks.0.ls1.gamma"] = torch.ones(128)
    with pytest.raises(ValueError, match="unsupported ViT variant.*ls1"):
        convert_state_dict(state)
    torch.save({"weights": torch.ones(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a udi file and not a DINO/timm ViT checkpoint"):
        load_backbone(tmp_path / "other.pth")
