import re

import pytest

from udi.config import ConfigError, config_dir, load_config, parse_overrides, resolve_config_path


def test_layering_defaults_file_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: dino\ndata:\n  name: scenes\ntrain:\n  batch_size: 8\n")
    cfg = load_config(path, ["train.batch_size=4", "optim.lr=1e-3", "views.shift=false"])
    assert cfg["method"] == "dino"
    assert cfg["train"]["batch_size"] == 4  # the command line wins over the file
    assert cfg["optim"]["lr"] == 0.001 and cfg["views"]["shift"] is False
    assert cfg["train"]["epochs"] == 100  # untouched default


@pytest.mark.parametrize(
    "text, message",
    [
        ("data:\n  name: scenes\ntrain:\n  batchsize: 3\n", "unknown config key 'train.batchsize'"),
        ("data:\n  name: scenes\nmethod: byol\n", "'method' must be one of"),
        ("train:\n  batch_size: 3\n", "set exactly one of 'data.name'"),
        ("data:\n  name: scenes\nviews:\n  global_size: 30\nmodel:\n  patch_size: 16\n", "divisible"),
        ("data:\n  name: scenes\ntrain: 3\n", "must be a mapping"),
        ("data:\n  name: scenes\nviews:\n  color_jitter: [0.4, 0.4]\n", "'views.color_jitter' must be 4"),
        ("data:\n  name: scenes\nviews:\n  color_jitter: [0.4, 0.4, 0.2, 0.7]\n", "hue <= 0.5"),
        ("data:\n  name: scenes\nviews:\n  grayscale_p: 1.5\n", "'views.grayscale_p' must be a probability"),
        ("data:\n  name: scenes\nloss:\n  centering: mean\n", "'loss.centering' must be one of center, sinkhorn"),
        ("data:\n  name: scenes\nloss:\n  sinkhorn_iters: 0\n", "'loss.sinkhorn_iters' must be a positive integer"),
        ("data:\n  name: scenes\nmodel:\n  stem: cnn\n", "'model.stem' must be one of patch, conv"),
        ("data:\n  name: scenes\nloss:\n  koleo_weight: -0.1\n", "'loss.koleo_weight' must be a number >= 0"),
        ("data:\n  name: scenes\nmodel:\n  stem: conv\n  patch_size: 12\nviews:\n  global_size: 24\n  local_size: 12\n",
         "'model.stem' conv needs a 'model.patch_size' that is a power of 2"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_override_errors():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.batch_size"])
    with pytest.raises(ConfigError, match="unknown config key 'nope.x'"):
        load_config(None, ["data.name=scenes", "nope.x=1"])


def test_every_shipped_config_loads():
    names = sorted(p.stem for p in config_dir().glob("*.yaml"))
    assert {"udi_cpu_demo", "dino_cpu_demo", "udi_vits16_in1k_300ep", "dino_vits16_in1k_300ep",
            "bootleg_cpu_demo", "bootleg_vits16_in1k"} <= set(names)
    for name in names:
        cfg = load_config(resolve_config_path(name), ["data.path=/some/folder", "data.name=null"])
        assert cfg["method"] in ("udi", "dino", "bootleg")
    in1k = load_config(resolve_config_path("udi_vits16_in1k_300ep"), ["data.path=/x"])
    assert in1k["model"]["arch"] == "vit_small" and in1k["train"]["epochs"] == 300
    assert in1k["views"]["n_local"] == 10 and in1k["head"]["out_dim"] == 65536


def test_resolve_unknown_config_lists_shipped():
    with pytest.raises(ConfigError, match="udi_cpu_demo"):
        resolve_config_path("nonexistent_config")


@pytest.mark.parametrize("value", [1.5, -0.1, "high", True])
def test_teacher_momentum_end_must_be_a_number_in_unit_interval(value):
    with pytest.raises(ConfigError, match="optim.momentum_teacher_end"):
        load_config(None, ["data.name=scenes", f"optim.momentum_teacher_end={value}"])


def test_pos_interp_choices():
    assert load_config(None, ["data.name=scenes", "model.pos_interp=dino"])["model"]["pos_interp"] == "dino"
    with pytest.raises(ConfigError, match="model.pos_interp"):
        load_config(None, ["data.name=scenes", "model.pos_interp=area"])


@pytest.mark.parametrize("text, message", [
    ("train:\n\tbatch_size: 3\n", "line 2, column 1 not valid YAML: found character '\\t'"),
    ("train: [1,\n", "not valid YAML"),
    ('train: !!python/object/apply:os.system ["echo hi"]\n', "no !!python tags"),
])
def test_yaml_errors_are_one_config_error(tmp_path, text, message):
    """Before: yaml's ScannerError/ParserError/ConstructorError tracebacks."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_an_override_that_is_not_yaml_is_named():
    with pytest.raises(ConfigError, match=re.escape("override 'data.name=[1,': line 1, column 4 not valid YAML")):
        load_config(None, ["data.name=[1,"])
