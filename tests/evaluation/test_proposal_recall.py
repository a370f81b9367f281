import numpy as np
import pytest
import torch

from detkit.evaluation.proposal_recall import proposal_recall

GT = [[0, 0, 10, 10]]
# IoUs with GT: 0.5, 0.8, 1.0 (same x-range, heights 5, 8, 10)
PROPS = [[0, 0, 10, 5], [0, 0, 10, 8], [0, 0, 10, 10]]


def test_single_gt_known_ious():
    r = proposal_recall([np.array(PROPS)], [np.array(GT)], top_ks=(1, 2, 3))
    assert r["R@0.5/1"] == 1.0 and r["R@0.7/1"] == 0.0
    assert r["R@0.7/2"] == 1.0 and r["R@0.7/3"] == 1.0
    # AR over 0.5:0.95: IoU 0.5 passes 1 of 10 thresholds, 0.8 passes 7, 1.0 passes all
    assert r["AR@1"] == pytest.approx(0.1)
    assert r["AR@2"] == pytest.approx(0.7)
    assert r["AR@3"] == pytest.approx(1.0)
    assert r["num_gt"] == 1


def test_pooled_over_images_and_ranking_matters():
    proposals = [
        torch.tensor([[50.0, 50, 60, 60], *PROPS]),  # miss first, then as above
        torch.tensor([[0.0, 0, 20, 20]]),  # covers gt a exactly, not gt b
        torch.zeros((0, 4)),  # image with gts but no proposals
        torch.tensor([[0.0, 0, 5, 5]]),  # image without gts: ignored
    ]
    gts = [
        torch.tensor(GT, dtype=torch.float32),
        torch.tensor([[0.0, 0, 20, 20], [100, 100, 120, 110]]),
        torch.tensor([[0.0, 0, 4, 4]]),
        torch.zeros((0, 4)),
    ]
    r = proposal_recall(proposals, gts, iou_thresholds=(0.5, 0.9), top_ks=(1, 2, 10))
    assert r["num_gt"] == 4
    # top-1: only image 2's first gt is found (image 1's first proposal misses)
    assert r["R@0.5/1"] == pytest.approx(1 / 4)
    assert r["R@0.5/2"] == pytest.approx(2 / 4)
    assert r["R@0.9/2"] == pytest.approx(1 / 4)
    assert r["R@0.9/10"] == pytest.approx(2 / 4)  # k beyond N uses all proposals
    assert r["AR@10"] == pytest.approx(2 / 4)
    assert set(r) == {f"R@{t}/{k}" for t in ("0.5", "0.9") for k in (1, 2, 10)} | {
        "AR@1",
        "AR@2",
        "AR@10",
        "num_gt",
    }


def test_numpy_and_tensor_agree():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 80, (50, 2))
    props = np.concatenate([xy, xy + rng.uniform(5, 40, (50, 2))], 1).astype(np.float32)
    gts = props[[3, 17, 40]] + 2.0
    a = proposal_recall([props], [gts])
    b = proposal_recall([torch.from_numpy(props)], [torch.from_numpy(gts)])
    assert a == b
    assert 0.0 < a["AR@100"] <= 1.0 and a["R@0.5/100"] == 1.0


def test_errors():
    with pytest.raises(ValueError, match="2 images"):
        proposal_recall([np.zeros((0, 4))] * 2, [np.array(GT)])
    with pytest.raises(ValueError, match="ground-truth"):
        proposal_recall([np.array(PROPS)], [np.zeros((0, 4))])
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        proposal_recall([np.zeros((3, 5))], [np.array(GT)])
