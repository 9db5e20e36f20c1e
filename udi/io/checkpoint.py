"""Atomic checkpoints and the exported backbone (safetensors, architecture in the metadata).

A checkpoint is written to a temporary file in the same folder, flushed to disk, then
renamed over the old one: a crash at any moment leaves either the old or the new file,
never a torn one. Loading uses ``torch.load(weights_only=True)``: no arbitrary unpickling
(tensors, plain containers and ``argparse.Namespace``, which DINO's checkpoints hold).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

BACKBONE_FORMAT = "udi.vit.v1"
TMP_SUFFIX = ".tmp"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteError(OSError):
    """A file could not be written (disk full, quota, file size limit, ...); the previous
    version of the file, if any, is unchanged and the temporary file is removed."""


def _free_mb(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MB free there"
    except OSError:
        return "free space unknown"


def _umask() -> int:
    """The process's umask: from /proc (Linux), else by setting it and putting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)``, fsync it, then rename it to ``path`` (same folder). The file gets
    the mode of any new file (0666 less the umask: 0644 under the default umask 022).

    A failure removes the temporary file and leaves ``path`` as it was; an error while writing
    (``torch.save`` reports a full disk as a RuntimeError) becomes a ``WriteError`` saying so."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp's 0600 (or a writer's own) would survive the rename: the mode of a new file instead
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except Exception as error:
        Path(tmp).unlink(missing_ok=True)
        kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
        raise WriteError(f"could not write {path} ({type(error).__name__}: {error}); {_free_mb(path.parent)}; "
                         f"{kept}") from error
    except BaseException:  # Ctrl-C, SystemExit: clean up, pass it on as it is
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files ``atomic_write`` left for ``names`` in ``folder`` when a process
    was killed mid-write (``.NAME.*.tmp``); returns them. Only for a folder no other process writes."""
    removed = []
    for name in names:
        for stale in Path(folder).glob(f".{name}.*{TMP_SUFFIX}"):
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def save_checkpoint(path: str | Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def copy_checkpoint(source: str | Path, path: str | Path) -> None:
    """An atomic copy of a written checkpoint (``train.keep_checkpoints``)."""
    atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))


# Types a checkpoint may hold beyond tensors and plain containers. DINO's main_dino.py stores its
# command-line ``args`` (an argparse.Namespace, a plain attribute bag) in every checkpoint.
SAFE_GLOBALS = [argparse.Namespace]


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a foreign or damaged file: say which, in one line
        raise ValueError(f"cannot load checkpoint {path}: {_load_failure(error, path)}") from error


def _load_failure(error: Exception, path: str | Path) -> str:
    """torch's weights-only refusal is a page that suggests ``weights_only=False``; keep its reason."""
    text = str(error)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (f"it holds a {refused.group(1)} object, and only tensors and plain containers are loaded "
                "(unpickling other objects can run arbitrary code)")
    reason = re.search(r"WeightsUnpickler error: \s*(.+?)\s*(?:\n\n|$)", text, re.S)
    # Not a zip archive (torch's format): the legacy pickle reader fails on such bytes in many ways
    # (UnpicklingError, EOFError, IndexError: pop from empty list, ...), all meaning "not weights".
    not_zip = not isinstance(error, OSError) and Path(path).is_file() and not zipfile.is_zipfile(path)
    if reason or not_zip or isinstance(error, (EOFError, pickle.UnpicklingError)):
        detail = reason.group(1).strip() if reason else (text or type(error).__name__)
        return f"not a PyTorch weights file, or a damaged one ({detail})"
    return f"{type(error).__name__}: {text}"


def export_backbone(path: str | Path, backbone: torch.nn.Module, extra: dict | None = None) -> None:
    """Backbone weights (DINO/timm parameter names) + ``{"format", "arch": json, ...}`` metadata."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in backbone.state_dict().items()}
    metadata = {"format": BACKBONE_FORMAT, "arch": json.dumps(backbone.arch_config())}
    metadata.update({k: str(v) for k, v in (extra or {}).items()})
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_backbone_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict and metadata of a ``.safetensors`` file."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return load_file(str(path)), metadata
