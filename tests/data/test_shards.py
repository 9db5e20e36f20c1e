"""WebDataset shards (``data.shards``, ``udi shards make``): the folder's items, in the folder's
order, so that pretraining from shards equals pretraining from the folder; two processes read
disjoint samples."""

import json
import os
import tarfile

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from udi.cli import main
from udi.config import ConfigError, load_config
from udi.data.datasets import ImageFolderDataset, load_image
from udi.data.shards import ShardDataset, expand_shards, make_shards
from udi.train.distributed import init_distributed, shutdown
from udi.train.loop import Trainer, pretrain

from ..train.conftest import TINY
from ..train.test_distributed import free_port
from ..train.test_pretrain_e2e import assert_same_state

CANVAS = 24


def _folder(root, n_images=12, corrupt=()):
    """``root/{cat,dog}/imgNNN.{png,jpg}``: noise images of varied sizes, every third a JPEG."""
    rng = np.random.default_rng(0)
    for i in range(n_images):
        path = root / ("cat" if i % 2 else "dog") / f"img{i:03d}.{'jpg' if i % 3 == 0 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i in corrupt:
            path.write_bytes(b"not an image at all")
            continue
        Image.fromarray(rng.integers(0, 256, (20 + i % 7, 24 + i % 5, 3), dtype=np.uint8)).save(path)
    return root


def _assert_same_items(shards, folder):
    assert len(shards) == len(folder) and shards.classes == folder.classes and shards.targets == folder.targets
    for i in range(len(folder)):
        a, b = shards[i], folder[i]
        assert torch.equal(a["image"], b["image"]), i
        assert {k: a[k] for k in ("aspect", "label", "index", "failed")} == {k: b[k] for k in ("aspect", "label", "index", "failed")}


def test_shards_of_a_folder_hold_its_items_in_its_order(tmp_path):
    folder = _folder(tmp_path / "images")
    result = make_shards(folder, tmp_path / "shards", shard_size=5)
    assert result == {"shards": 3, "samples": 12, "classes": 2,
                      "pattern": str(tmp_path / "shards" / "shard-{000000..000002}.tar")}
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "classes.json", *(f"shard-{i:06d}.tar{suffix}" for i in range(3) for suffix in ("", ".idx.json"))]
    assert json.loads((tmp_path / "shards" / "classes.json").read_text()) == ["cat", "dog"]
    reference = ImageFolderDataset(folder, canvas_size=CANVAS)
    shards = ShardDataset(result["pattern"], canvas_size=CANVAS)
    _assert_same_items(shards, reference)
    # The original bytes under the original extension (no re-encoding), WebDataset's member names.
    for i, (path, label) in enumerate(reference.samples):
        assert shards.read(i) == path.read_bytes() and shards._extension[i] == path.suffix[1:]
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        assert tar.getnames()[:3] == ["000000000.cls", "000000000.path.txt", "000000000.png"]
        assert tar.extractfile("000000000.path.txt").read() == b"cat/img001.png"


def test_brace_patterns_lists_and_an_unlabelled_folder(tmp_path):
    flat = tmp_path / "flat"
    for i in range(4):
        flat.mkdir(exist_ok=True)
        Image.new("RGB", (8 + i, 8), (10 * i, 0, 0)).save(flat / f"{i}.png")
    result = make_shards(flat, tmp_path / "out", shard_size=2)
    names = [str(tmp_path / "out" / f"shard-00000{i}.tar") for i in range(2)]
    assert expand_shards(result["pattern"]) == names
    assert expand_shards([names[1], result["pattern"]]) == [names[1], *names]
    shards = ShardDataset(names, canvas_size=8)
    assert shards.classes == [] and shards.targets == [-1] * 4  # no cls members
    _assert_same_items(shards, ImageFolderDataset(flat, canvas_size=8))
    reversed_order = ShardDataset(names[::-1], canvas_size=8)  # items follow the shards' order
    assert [reversed_order.name(i).rsplit(":", 1)[1] for i in range(4)] == [f"00000000{i}" for i in (2, 3, 0, 1)]


def test_missing_shards_and_bad_settings_are_clear_errors(tmp_path):
    make_shards(_folder(tmp_path / "images", 4), tmp_path / "shards", shard_size=2)
    missing = tmp_path / "shards" / "shard-000002.tar"
    with pytest.raises(FileNotFoundError, match="shard-000002.tar does not exist"):
        ShardDataset(str(tmp_path / "shards" / "shard-{000000..000002}.tar"))
    with pytest.raises(FileNotFoundError, match="shard-000002.tar"):
        pretrain(load_config(None, TINY + ["data.name=null", f"data.shards=[{missing}]"]), tmp_path / "run")
    with pytest.raises(ConfigError, match="exactly one of 'data.name'"):
        load_config(None, TINY + [f"data.shards={missing}"])
    with pytest.raises(ConfigError, match="'data.shards' must be a path"):
        load_config(None, TINY + ["data.name=null", "data.shards=[]"])
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b not a plain tar")
    with pytest.raises(ValueError, match="not an uncompressed tar"):
        ShardDataset(str(tmp_path / "x.tar.gz"))
    (tmp_path / "cut.tar").write_bytes((tmp_path / "shards" / "shard-000000.tar").read_bytes()[:1700])
    with pytest.raises(ValueError, match="cut.tar is damaged"):
        ShardDataset(str(tmp_path / "cut.tar"))


def test_an_undecodable_member_is_skipped_like_an_undecodable_file(tmp_path):
    folder = _folder(tmp_path / "images", 6, corrupt={0})  # dog/img000.jpg: item 3 in path order
    result = make_shards(folder, tmp_path / "shards", shard_size=4)
    shards, reference = ShardDataset(result["pattern"], CANVAS), ImageFolderDataset(folder, CANVAS)
    with pytest.warns(UserWarning, match=r"shard-000000\.tar:000000003\.jpg"):
        item = shards[3]
    with pytest.warns(UserWarning, match="img000.jpg"):
        expected = reference[3]
    assert item["failed"] == expected["failed"] == 1 and item["index"] == expected["index"] == 4
    assert torch.equal(item["image"], expected["image"])
    assert shards.failed_paths == {str(tmp_path / "shards" / "shard-000000.tar") + ":000000003"}


def test_full_resolution_views_get_the_member_bytes(tmp_path):
    """``data.crops: full`` sets ``views`` (a callable of the file and the index) on the data set:
    shards hand it the member's bytes, which decode as the folder's file."""
    folder = _folder(tmp_path / "images", 4)
    shards = ShardDataset(make_shards(folder, tmp_path / "shards", shard_size=3)["pattern"])
    shards.views = lambda source, index: {"crop": load_image(source, 8)[0], "seeded_by": index}
    for i, (path, label) in enumerate(ImageFolderDataset(folder).samples):
        item = shards[i]
        assert torch.equal(item.pop("crop"), load_image(path, 8)[0])
        assert item == {"seeded_by": i, "label": label, "index": i, "failed": 0}


def test_udi_shards_make(tmp_path, capsys, err_contains):
    folder = _folder(tmp_path / "images", 6)
    (folder / "train").mkdir()  # the train split of a folder with train/: what pretraining reads
    (folder / "cat").rename(folder / "train" / "cat")
    out = tmp_path / "shards"
    assert main(["shards", "make", str(folder), str(out), "--shard-size", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["shards"] == 2 and printed["samples"] == 3 and printed["classes"] == 1
    assert main(["shards", "make", str(folder), str(out), "--shard-size", "2"]) == 2
    assert err_contains(f"error: {out} already exists and is not an empty folder")
    assert main(["shards", "make", str(folder), str(tmp_path / "other"), "--shard-size", "0"]) == 2
    assert err_contains("--shard-size must be a positive integer")


def _tiny(*extra):
    # 48 images / 8 per batch: 6 steps per epoch, 4 epochs.
    return load_config(None, TINY + ["data.name=null", f"data.canvas_size={CANVAS}", "train.epochs=4",
                                     "data.max_fail_fraction=0.5", *extra])


@pytest.fixture
def one_thread():
    """Both runs of a comparison on one thread: tiny steps spend most of their time waiting for a
    second thread on busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.filterwarnings("ignore:could not decode image")
def test_pretraining_from_shards_equals_pretraining_from_the_folder(tmp_path, one_thread):
    """20 steps from the shards give the weights, log and undecodable files of 20 steps from the
    folder, also when stopped mid-epoch and resumed on the way (exact resume)."""
    folder = _folder(tmp_path / "images", 48, corrupt={7})
    pattern = make_shards(folder, tmp_path / "shards", shard_size=10)["pattern"]
    pretrain(_tiny(f"data.path={folder}", "train.max_steps=20"), tmp_path / "folder")
    pretrain(_tiny(f"data.shards={pattern}", "train.max_steps=20"), tmp_path / "shards_run")
    assert_same_state(tmp_path / "folder", tmp_path / "shards_run")
    pretrain(_tiny(f"data.shards={pattern}", "train.max_steps=9"), tmp_path / "resumed")  # mid-epoch 2
    pretrain(_tiny(f"data.shards={pattern}", "train.max_steps=20"), tmp_path / "resumed")
    assert_same_state(tmp_path / "folder", tmp_path / "resumed")
    failed = [torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)["failed_files"]
              for run in ("folder", "shards_run", "resumed")]
    assert failed[0] == failed[1] == failed[2] and len(failed[0]) == 1


def _worker(rank, world, port, pattern, out_dir, result_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    read = []
    real_getitem = ShardDataset.__getitem__

    def recording_getitem(self, index):  # this process only: the samples it decodes
        item = real_getitem(self, index)
        read.append(item["index"])
        return item

    ShardDataset.__getitem__ = recording_getitem
    trainer = Trainer(_tiny(f"data.shards={pattern}", "train.max_steps=3"), out_dir, init_distributed("cpu"))
    trainer.run()
    weights = torch.cat([p.detach().flatten() for p in trainer.student.parameters()]).tolist()
    (result_dir / f"rank{rank}.json").write_text(json.dumps({"read": read, "weights": weights}))
    shutdown()


@pytest.mark.slow  # two spawned processes: mostly start-up
def test_two_processes_read_disjoint_samples(tmp_path):
    pattern = make_shards(_folder(tmp_path / "images", 48), tmp_path / "shards", shard_size=10)["pattern"]
    results = tmp_path / "results"
    results.mkdir()
    mp.start_processes(_worker, args=(2, free_port(), pattern, tmp_path / "run", results), nprocs=2,
                       start_method="spawn")
    ranks = [json.loads((results / f"rank{r}.json").read_text()) for r in range(2)]
    read = [set(r["read"]) for r in ranks]
    # 3 steps of 2 x 8 images: one epoch of 48, each image read once, by one process.
    assert all(len(r["read"]) == len(s) == 24 for r, s in zip(ranks, read))
    assert not read[0] & read[1] and read[0] | read[1] == set(range(48))
    assert ranks[0]["weights"] == ranks[1]["weights"]


def test_the_index_beside_each_shard_replaces_reading_its_headers(tmp_path, monkeypatch):
    # make_shards writes shard-N.tar.idx.json; a dataset then reads no tar header, and the index of a
    # shard that changed since (size, mtime) is not trusted.
    import udi.data.shards as shards_module

    folder = _folder(tmp_path)
    make_shards(folder, tmp_path / "shards", shard_size=5)
    pattern = str(tmp_path / "shards" / "shard-{000000..000002}.tar")
    scanned = ShardDataset(pattern, canvas_size=CANVAS)
    for index in (tmp_path / "shards").glob("*.idx.json"):
        assert json.loads(index.read_text())["samples"]
    with monkeypatch.context() as patch:
        patch.setattr(shards_module, "_scan_shard", lambda path: pytest.fail(f"scanned {path}"))
        indexed = ShardDataset(pattern, canvas_size=CANVAS)
    assert len(indexed) == len(scanned)
    assert all(torch.equal(indexed[i]["image"], scanned[i]["image"]) for i in range(len(scanned)))
    first = tmp_path / "shards" / "shard-000000.tar"
    os.utime(first, ns=(0, 12345))  # "rewritten": its index is stale
    calls = []
    original = shards_module._scan_shard
    monkeypatch.setattr(shards_module, "_scan_shard", lambda path: calls.append(path) or original(path))
    assert len(ShardDataset(pattern, canvas_size=CANVAS)) == len(scanned) and calls == [str(first)]



def test_udi_shards_index_writes_the_missing_indexes(tmp_path):
    folder = _folder(tmp_path)
    make_shards(folder, tmp_path / "shards", shard_size=5)
    for index in (tmp_path / "shards").glob("*.idx.json"):
        index.unlink()
    assert main(["shards", "index", str(tmp_path / "shards" / "shard-{000000..000002}.tar")]) == 0
    assert len(list((tmp_path / "shards").glob("*.idx.json"))) == 3
    assert main(["shards", "index", str(tmp_path / "shards" / "shard-000009.tar")]) != 0
