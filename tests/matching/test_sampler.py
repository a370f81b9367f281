import pytest
import torch

from detkit.matching import BalancedSampler


def _labels(num_pos, num_neg, num_ignore=0):
    return torch.tensor([1] * num_pos + [0] * num_neg + [-1] * num_ignore)


def test_counts_follow_fraction_and_fill_with_negatives():
    labels = torch.stack([_labels(10, 20), _labels(1, 29), _labels(6, 2, 22)])
    pos, neg = BalancedSampler(8, 0.25)(labels)
    assert pos.sum(1).tolist() == [2, 1, 2]
    assert neg.sum(1).tolist() == [6, 7, 2]
    assert not (pos & neg).any()
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()


def test_all_positive_and_no_positive_images():
    labels = torch.stack([_labels(12, 0), _labels(0, 12)])
    pos, neg = BalancedSampler(8, 0.5)(labels)
    assert pos.sum(1).tolist() == [4, 0]
    assert neg.sum(1).tolist() == [0, 8]


def test_never_samples_ignored_or_invalid_entries():
    labels = torch.tensor([[1, 1, -1, -1, 0, 0, 0, 1]])
    valid = torch.tensor([[True, False, True, True, True, False, True, True]])
    pos, neg = BalancedSampler(100, 0.5)(labels, valid=valid)
    assert pos.tolist() == [[True, False, False, False, False, False, False, True]]
    assert neg.tolist() == [[False, False, False, False, True, False, True, False]]


def test_generator_makes_draws_reproducible():
    labels = _labels(20, 40).repeat(3, 1)
    sampler = BalancedSampler(16, 0.25)
    a = sampler(labels, generator=torch.Generator().manual_seed(7))
    b = sampler(labels, generator=torch.Generator().manual_seed(7))
    c = sampler(labels, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


def test_positives_are_chosen_uniformly():
    # 600 independent draws (one per row) of 2 out of 6 positives: each expected 200 times.
    labels = _labels(6, 10).repeat(600, 1)
    pos, _ = BalancedSampler(4, 0.5)(labels, generator=torch.Generator().manual_seed(0))
    counts = pos[:, :6].sum(0)
    assert pos.sum().item() == 1200
    assert ((counts - 200).abs() < 50).all(), counts.tolist()


def test_empty_and_invalid_arguments():
    pos, neg = BalancedSampler(4, 0.5)(torch.zeros(2, 0, dtype=torch.int64))
    assert pos.shape == (2, 0) and neg.shape == (2, 0)
    with pytest.raises(ValueError):
        BalancedSampler(0, 0.5)
    with pytest.raises(ValueError):
        BalancedSampler(4, 1.5)
