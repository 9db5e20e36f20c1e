from udi.train.sampler import ResumableSampler


def test_epoch_covers_whole_batches_without_repeats():
    sampler = ResumableSampler(103, batch_size=10, world_size=1, seed=1)
    indices = list(sampler)
    assert len(indices) == 100 == len(sampler) and len(set(indices)) == 100


def test_ranks_split_each_global_batch_and_match_single_process_order():
    single = list(ResumableSampler(64, batch_size=8, world_size=1, seed=3))
    ranks = [list(ResumableSampler(64, batch_size=4, world_size=2, rank=r, seed=3)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    rebuilt = [i for b in range(8) for r in range(2) for i in ranks[r][4 * b : 4 * b + 4]]
    assert rebuilt == single  # the same global batches, whatever the sharding


def test_mid_epoch_start_and_epoch_seeding():
    sampler = ResumableSampler(50, batch_size=5, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start_batch=3)
    assert list(sampler) == full[15:] and len(sampler) == 35
    sampler.set_epoch(3)
    assert list(sampler) != full
