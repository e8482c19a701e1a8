"""StepSampler: the data order behind exact resume and DDP sharding."""

from itertools import islice

from must.resume import StepSampler


def take(sampler, n):
    return list(islice(iter(sampler), n))


def test_each_pass_is_a_permutation_and_passes_differ():
    first, second = take(StepSampler(10, seed=3), 20)[:10], take(StepSampler(10, seed=3), 20)[10:]
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert first != second
    assert take(StepSampler(10, seed=3), 20) == take(StepSampler(10, seed=3), 20)  # same seed, same order


def test_starting_later_continues_the_same_order():
    full = take(StepSampler(7, seed=1), 30)
    assert take(StepSampler(7, seed=1, start=12), 18) == full[12:]


def test_ranks_read_disjoint_positions_that_interleave_to_the_single_process_order():
    full = take(StepSampler(8, seed=0), 16)
    rank0 = take(StepSampler(8, seed=0, rank=0, world_size=2), 8)
    rank1 = take(StepSampler(8, seed=0, rank=1, world_size=2), 8)
    assert [x for pair in zip(rank0, rank1) for x in pair] == full
    # A per-rank start (samples each rank has read) resumes both ranks where they were.
    assert take(StepSampler(8, seed=0, start=3, rank=1, world_size=2), 5) == rank1[3:]


def test_positions_come_with_their_index():
    pairs = take(StepSampler(5, seed=2, start=4, positions=True), 3)
    assert [p for p, _ in pairs] == [4, 5, 6]
    assert [i for _, i in pairs] == take(StepSampler(5, seed=2, start=4), 3)
