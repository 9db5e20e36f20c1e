"""train.precision on a CPU: a warning where autocast would emulate the matrix products."""

import types
import warnings

import pytest
import torch

from udi.train.loop import Trainer, cpu_precision_warning

CPU = torch.device("cpu")


@pytest.mark.parametrize("precision, check", [("bf16", "_is_mkldnn_bf16_supported"), ("fp16", "_is_mkldnn_fp16_supported")])
def test_warns_only_without_native_units(monkeypatch, precision, check):
    monkeypatch.setattr(torch.ops.mkldnn, check, lambda: False)
    message = cpu_precision_warning(CPU, precision)
    assert message and f"train.precision={precision}" in message and "fp32" in message
    monkeypatch.setattr(torch.ops.mkldnn, check, lambda: True)
    assert cpu_precision_warning(CPU, precision) is None


def test_no_warning_for_fp32_or_other_devices(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert cpu_precision_warning(CPU, "fp32") is None
    assert cpu_precision_warning(torch.device("cuda"), "bf16") is None  # no CUDA needed: devices are not touched


def test_trainer_warns_but_keeps_the_precision(monkeypatch, tmp_path, tiny_cfg):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="train.precision=bf16 on a CPU without native bf16"):
        trainer = Trainer(tiny_cfg("train.precision=bf16"), tmp_path / "slow")
    assert trainer.cfg["train"]["precision"] == "bf16"  # the user's value stands
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(tiny_cfg("train.precision=bf16"), tmp_path / "native")


def test_a_torch_without_the_onednn_check_warns(monkeypatch):
    def missing():
        raise RuntimeError("No such operator mkldnn::_is_mkldnn_bf16_supported")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", missing)
    assert "train.precision=bf16" in cpu_precision_warning(CPU, "bf16")
    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace())  # no such op at all: the lookup fails
    assert "train.precision=bf16" in cpu_precision_warning(CPU, "bf16")
