import math

import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

from detkit.data import AspectRatioGroupedBatchSampler, aspect_ratio_groups

RATIOS = [
    1.5,
    0.75,
    1.0,
    0.5,
    1.33,
    0.66,
    0.8,
    1.25,
    2.0,
    0.9,
    1.1,
]  # 5 portrait, 6 landscape/square


def test_groups():
    assert aspect_ratio_groups([0.5, 1.0, 1.5]) == [0, 1, 1]
    assert aspect_ratio_groups([0.5, 1.0, 1.5, 3.0], boundaries=(0.8, 2.0)) == [
        0,
        1,
        1,
        2,
    ]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
def test_every_index_once_and_pure_full_batches(batch_size):
    sampler = RandomSampler(range(len(RATIOS)), generator=torch.Generator().manual_seed(0))
    bs = AspectRatioGroupedBatchSampler(sampler, RATIOS, batch_size)
    batches = list(bs)
    assert sorted(i for b in batches for i in b) == list(range(len(RATIOS)))
    assert len(batches) == len(bs) == math.ceil(len(RATIOS) / batch_size)
    groups = aspect_ratio_groups(RATIOS)
    mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
    assert len(mixed) <= 1  # only a leftover batch can mix the two groups
    assert all(len(b) <= batch_size for b in batches)


def test_order_and_drop_last():
    bs = AspectRatioGroupedBatchSampler(SequentialSampler(RATIOS), RATIOS, 2)
    # landscape: 0 2 4 7 8 10, portrait: 1 3 5 6 9
    assert list(bs) == [
        [0, 2],
        [1, 3],
        [5, 6],
        [4, 7],
        [8, 10],
        [9],
    ]  # a batch goes out when full
    bs = AspectRatioGroupedBatchSampler(SequentialSampler(RATIOS), RATIOS, 4, drop_last=True)
    batches = list(bs)
    assert batches == [[1, 3, 5, 6], [0, 2, 4, 7]] and len(bs) == 2  # leftovers 9, 8, 10 dropped


def test_distributed_inner_sampler_equal_batch_counts():
    ratios = [0.5] * 3 + [2.0] * 10
    per_rank = []
    for rank in range(2):
        inner = DistributedSampler(range(len(ratios)), num_replicas=2, rank=rank, shuffle=True, seed=1)
        bs = AspectRatioGroupedBatchSampler(inner, ratios, 3)
        bs.set_epoch(3)
        batches = list(bs)
        assert len(batches) == len(bs) == math.ceil(len(inner) / 3)
        per_rank.append([i for b in batches for i in b])
    assert len(per_rank[0]) == len(per_rank[1]) == 7  # DistributedSampler pads 13 -> 14
    assert set(per_rank[0]) | set(per_rank[1]) == set(range(len(ratios)))
