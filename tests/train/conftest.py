import pytest

from udi.config import load_config

TINY = [
    "data.name=scenes", "data.scenes_size=16", "data.scenes_num_images=96", "data.num_workers=0",
    "model.arch=vit_nano", "model.patch_size=4", "model.drop_path_rate=0.1",
    "head.out_dim=64", "head.hidden_dim=64", "head.bottleneck_dim=32",
    "views.global_size=16", "views.local_size=8", "views.n_local=2",
    "views.global_window=2", "views.local_window=1",
    "train.batch_size=8", "train.epochs=3", "train.device=cpu", "train.progress=false",
    "train.log_every=1", "train.checkpoint_every=4",
    "optim.warmup_epochs=1", "loss.warmup_teacher_temp_epochs=2",
]


@pytest.fixture
def tiny_overrides():
    return list(TINY)


@pytest.fixture
def tiny_cfg():
    return lambda *extra: load_config(None, TINY + list(extra))
