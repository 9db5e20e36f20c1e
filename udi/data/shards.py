"""WebDataset ``.tar`` shards as a training source (``data.shards``), and writing them from a folder.

A shard is an uncompressed tar file of samples, each a group of members that share a key
(WebDataset's convention: the key is the member name up to the first dot of its file name,
the rest its extension). A sample's image is its first member with an image extension
(``jpg``, ``png``, ... as in ``IMAGE_EXTENSIONS``), kept as the original file's bytes; its
label, if any, is the integer text of its ``cls`` member (-1 without one). Members of no image
sample (metadata) are ignored. The class names are read from ``classes.json`` (a JSON list)
beside the first shard, else ``"0"``, ``"1"``, ... up to the largest label.

``ShardDataset`` is map-style: it indexes every shard once at start-up (where each image and
label member lies in its file) and reads one member per item, so the ``ResumableSampler``
orders, shards by rank and resumes it exactly as it does a folder. ``make_shards`` writes a
folder's images in the folder data set's order, so item ``i`` of the shards is item ``i`` of
the folder: pretraining on either gives the same batches, the same weights.
"""

from __future__ import annotations

import json
import math
import os
import re
import tarfile
import warnings
from pathlib import Path

import numpy as np
from braceexpand import braceexpand
from torch.utils.data import Dataset

from udi.data.datasets import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_EXTENSIONS, _item, build_dataset, load_image
from udi.io.checkpoint import atomic_write

CLASSES_FILE = "classes.json"
SHARD_PATTERN = "shard-%06d.tar"  # the files make_shards writes (printf style, as webdataset.ShardWriter)
LABEL_MEMBER = "cls"
INDEX_SUFFIX = ".idx.json"  # beside each shard: where its members lie (written by make_shards)
PATH_MEMBER = "path.txt"  # written by make_shards: the image's path relative to the folder
_IMAGE_MEMBERS = {e.lstrip(".") for e in IMAGE_EXTENSIONS}
_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


def expand_shards(spec: str | list[str]) -> list[str]:
    """The shard files of ``data.shards``: a path, a brace pattern (``shard-{000000..000009}.tar``)
    or a list of either, expanded in order."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"data.shards must be a path, a brace pattern or a non-empty list of paths; got {spec!r}")
    return [path for pattern in patterns for path in braceexpand(pattern)]


def _index_file(path: str) -> Path:
    """The index ``make_shards`` writes beside a shard (``shard-000000.tar.idx.json``)."""
    return Path(f"{path}{INDEX_SUFFIX}")


def _stamp(path: str) -> dict:
    """What must not have changed since the index was written: the shard's size and mtime."""
    info = os.stat(path)
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def write_index(path: str) -> None:
    """Scan ``path`` once and write its index beside it, so that no process reads its headers again."""
    rows = _scan_shard(path)
    atomic_write(_index_file(path), lambda tmp: Path(tmp).write_text(json.dumps({**_stamp(path), "samples": rows})))


def _index_shard(path: str) -> list[tuple[str, str, int, int, int]]:
    """(key, image extension, data offset, size, label) of each image sample of the shard, in tar
    order: from its index file when that was written for this very file (same size and mtime;
    a copied or rewritten shard is scanned again), else by reading every member header."""
    index = _index_file(path)
    if index.is_file():
        try:
            record = json.loads(index.read_text())
            if {k: record.get(k) for k in ("size", "mtime_ns")} == _stamp(path):
                return [tuple(row) for row in record["samples"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # damaged: scan
    return _scan_shard(path)


def _scan_shard(path: str) -> list[tuple[str, str, int, int, int]]:
    """``_index_shard`` by reading the tar's member headers."""
    try:
        tar = tarfile.open(path, mode="r:")  # "r:": uncompressed only (members are read by offset)
    except tarfile.ReadError as error:
        raise ValueError(f"shard {path} is not an uncompressed tar file ({error})") from None
    try:
        with tar:
            return _index_members(tar, path)
    except tarfile.TarError as error:  # a truncated or damaged shard
        raise ValueError(f"shard {path} is damaged ({type(error).__name__}: {error})") from None


def _index_members(tar: tarfile.TarFile, path: str) -> list[tuple[str, str, int, int, int]]:
    samples: dict[str, dict] = {}
    for member in tar:
        match = _KEY_AND_EXTENSION.match(member.name)
        if not member.isfile() or not match:
            continue
        key, extension = match.group(1), match.group(2).lower()
        sample = samples.setdefault(key, {})
        if extension in _IMAGE_MEMBERS and "image" not in sample:
            sample["image"] = (extension, member.offset_data, member.size)
        elif extension == LABEL_MEMBER:
            text = tar.extractfile(member).read().decode("utf-8", "replace").strip()
            try:
                sample["label"] = int(text)
            except ValueError:
                raise ValueError(f"shard {path}: member {member.name} is not an integer label: "
                                 f"{text[:40]!r}") from None
    return [(key, *s["image"], s.get("label", -1)) for key, s in samples.items() if "image" in s]


def _read_classes(shards: list[str], labels: np.ndarray) -> list[str]:
    path = Path(shards[0]).parent / CLASSES_FILE
    if not path.is_file():
        return [str(c) for c in range(int(labels.max()) + 1)] if labels.size and labels.max() >= 0 else []
    classes = json.loads(path.read_text())
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{path}: expected a JSON list of class names")
    if labels.size and labels.max() >= len(classes):
        raise ValueError(f"{path} names {len(classes)} classes, but the shards hold label {int(labels.max())}")
    return classes


class ShardDataset(Dataset):
    """The images of WebDataset shards (``data.shards``), decoded like folder images.

    Items: see :mod:`udi.data.datasets`; ``image`` is (3, canvas_size, canvas_size), item
    ``i`` is the ``i``-th image sample over the shards in the given order. As in
    ``ImageFolderDataset``, a member that cannot be decoded is reported with
    ``warnings.warn`` and replaced by the next decodable one (wrapping around), ``failed``
    counts those skipped, and ``failed_paths`` keeps this process's distinct failures as
    ``"SHARD:KEY"``. With ``views`` set (``data.crops: full``), the item has that callable's
    fields (the crops of the image, cut from the member's bytes) instead of ``image`` and ``aspect``.
    """

    def __init__(self, shards: str | list[str], canvas_size: int = 256,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self.shards = expand_shards(shards)
        for path in self.shards:
            if not Path(path).is_file():
                raise FileNotFoundError(f"shard {path} does not exist (data.shards: {shards!r})")
        self.canvas_size, self.max_image_pixels = canvas_size, max_image_pixels
        self.failed_paths: set[str] = set()  # per process: each DataLoader worker has its own copy
        self.views = None  # data.crops: full -- a callable (bytes, index) -> item fields (udi.data.crops)
        shard_of, rows = [], []
        for number, path in enumerate(self.shards):
            found = _index_shard(path)
            shard_of += [number] * len(found)
            rows += found
        if not rows:
            raise FileNotFoundError(f"no image samples ({', '.join(sorted(_IMAGE_MEMBERS))}) in the shards {shards!r}")
        keys, extensions, offsets, sizes, labels = zip(*rows)
        # Arrays, not a list of tuples: compact, and DataLoader workers share them (no reference counts).
        self._shard = np.asarray(shard_of, dtype=np.int32)
        self._key, self._extension = np.asarray(keys), np.asarray(extensions)
        self._offset, self._size = np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = _read_classes(self.shards, self.labels)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, index: int) -> str:
        """``SHARD:KEY`` of item ``index``."""
        return f"{self.shards[self._shard[index]]}:{self._key[index]}"

    def read(self, index: int) -> bytes:
        """The image member's bytes of item ``index``."""
        with open(self.shards[self._shard[index]], "rb") as handle:
            handle.seek(int(self._offset[index]))
            data = handle.read(int(self._size[index]))
        if len(data) != self._size[index]:
            raise OSError(f"the shard ends {self._size[index] - len(data)} bytes before the member's end (truncated)")
        return data

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        for skipped in range(n):
            i = (index + skipped) % n
            try:
                if self.views is not None:
                    fields = self.views(self.read(i), i)
                else:
                    image, aspect = load_image(self.read(i), self.canvas_size, self.max_image_pixels)
            except Exception as err:  # PIL raises many types (OSError, ValueError, SyntaxError, ...)
                warnings.warn(f"could not decode image {self.name(i)}.{self._extension[i]} "
                              f"({type(err).__name__}: {err}); using the next one")
                self.failed_paths.add(self.name(i))
                continue
            if self.views is not None:
                return {**fields, "label": int(self.labels[i]), "index": int(i), "failed": int(skipped)}
            return _item(image, aspect, int(self.labels[i]), i, failed=skipped)
        raise RuntimeError(f"no decodable image in the shards {self.shards[0]} ... {self.shards[-1]}")

    @property
    def num_failed(self) -> int:
        """Distinct undecodable members met so far in this process."""
        return len(self.failed_paths)


def make_shards(folder: str | Path, out: str | Path, shard_size: int, split: str = "train") -> dict:
    """Write the images of ``folder`` to ``out/shard-000000.tar``, ... (``shard_size`` samples each).

    The images are those pretraining on ``data.path=folder`` reads (``split``: as in
    ``build_dataset``, "train" takes ``folder/train`` where it exists), in the same order,
    each as its original bytes under key ``%09d`` (its index) and its lower-cased extension,
    with its label in ``cls`` (ImageFolder layouts) and its relative path in ``path.txt``;
    the class names go to ``out/classes.json``. ``out`` must not exist or be empty.

    Returns ``{"shards": count, "samples": count, "pattern": brace pattern of the files}``.
    """
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"--shard-size must be a positive integer; got {shard_size!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder: give a new output folder")
    dataset = build_dataset(path=str(folder), split=split)  # lists the files, decodes nothing
    from webdataset.writer import ShardWriter  # imported here: slow to import, and only writing needs it

    out.mkdir(parents=True, exist_ok=True)
    # encoder=False: the bytes as they are; mtime fixed: the same folder gives the same files.
    with ShardWriter(str(out / SHARD_PATTERN), maxcount=shard_size, maxsize=math.inf, verbose=0, encoder=False,
                     mtime=0) as writer:
        for index, (path, label) in enumerate(dataset.samples):
            sample = {"__key__": f"{index:09d}", path.suffix.lstrip(".").lower(): path.read_bytes(),
                      PATH_MEMBER: path.relative_to(dataset.root).as_posix().encode()}
            if label >= 0:
                sample[LABEL_MEMBER] = str(label).encode()
            writer.write(sample)
    (out / CLASSES_FILE).write_text(json.dumps(dataset.classes))
    count = math.ceil(len(dataset) / shard_size)
    for number in range(count):  # start-up then reads one small file per shard, not every header
        write_index(str(out / (SHARD_PATTERN % number)))
    brace = SHARD_PATTERN % 0 if count == 1 else SHARD_PATTERN.replace("%06d", f"{{{0:06d}..{count - 1:06d}}}")
    return {"shards": count, "samples": len(dataset), "classes": len(dataset.classes), "pattern": str(out / brace)}
