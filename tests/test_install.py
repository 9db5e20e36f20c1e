"""The package as users get it: a wheel built from the repository, installed away from the
editable checkout, trains from another folder with a shipped config (package data)."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

import udi
from udi.config import config_dir

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "udi")  # what the wheel is built from


def test_version_in_one_place():
    """pyproject reads the version from udi.__version__ (no second copy to drift)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"], "pyproject.toml must not repeat the version"
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "udi.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", udi.__version__)


def test_version_flag(capsys):
    from udi.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"udi {udi.__version__}"


def test_shipped_configs_are_package_data():
    assert config_dir() == Path(udi.__file__).resolve().parent / "configs"
    assert (config_dir() / "udi_cpu_demo.yaml").is_file()


def _build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the sources (no build/ or egg-info left in the checkout)."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(source, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp / "dist").glob("udi-*.whl")
    return wheel


@pytest.mark.slow  # builds a wheel, makes a venv, trains 2 steps in a fresh process (~20 s)
def test_wheel_installs_and_trains_from_another_folder(tmp_path):
    wheel = _build_wheel(tmp_path)
    assert wheel.name == f"udi-{udi.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in config_dir().glob("*.yaml"))
    assert shipped and all(f"udi/configs/{name}" in names for name in shipped)

    # A venv of its own with the wheel; the third-party packages come from this one's
    # site-packages through a .pth line (which, unlike a site dir, does not run this venv's
    # editable-install hook, so `import udi` can only find the wheel's copy).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, text=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    found = subprocess.run([str(python), "-c", "import udi; print(udi.__file__)"], cwd=elsewhere, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert Path(found).is_relative_to(site), found  # the installed copy, not the checkout

    udi_exe = venv / "bin" / "udi"
    version = subprocess.run([str(udi_exe), "--version"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"udi {udi.__version__}"
    tiny = ["train.max_steps=2", "train.batch_size=4", "train.progress=false", "train.eval_every=0",
            "data.scenes_num_images=32"]
    run = subprocess.run([str(udi_exe), "pretrain", "--config", "udi_cpu_demo", "--out", "run", *tiny],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert '"step": 2' in run.stdout.strip().splitlines()[-1]
    for name in ("checkpoint.pt", "backbone.safetensors", "config.yaml"):
        assert (elsewhere / "run" / name).is_file(), name
