"""A run's random streams are mixed from (seed, stream, keys): no stream of one seed is a stream of
another seed, as offsets added to the seed (seed + stage, seed + 1000 * stage + rank) made them."""

import itertools

from tgfr.train.seeds import DATA_STREAM, LOADER_STREAM, STEP_STREAM, stream_seed


def test_the_streams_of_nearby_seeds_stages_and_ranks_are_all_distinct():
    seeds = list(range(8)) + [1000, 1001, 2000, 2**32 - 1]
    streams = ([(DATA_STREAM, stage) for stage in range(3)]
               + [(STEP_STREAM, stage, rank) for stage in range(3) for rank in range(4)]
               + [(LOADER_STREAM, epoch) for epoch in range(3)])
    derived = [stream_seed(seed, *stream) for seed, stream in itertools.product(seeds, streams)]
    assert len(set(derived)) == len(derived)
    assert all(0 <= value < 2**32 for value in derived)


def test_a_stream_seed_is_a_fixed_function_of_its_keys():
    assert stream_seed(5, STEP_STREAM, 1, 0) == stream_seed(5, STEP_STREAM, 1, 0)
    assert stream_seed(5, STEP_STREAM, 1, 0) != stream_seed(5, STEP_STREAM, 0, 1)
