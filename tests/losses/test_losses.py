"""Tests for detkit.losses: hand-computed values, parity with torch / torchvision, reductions."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops

from detkit import losses as L


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _boxes(n, seed=0):
    xy = torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)) * 10
    wh = torch.rand(n, 2, generator=torch.Generator().manual_seed(seed + 1)) * 5 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


# ---------------------------------------------------------------- reduce_loss


def test_reduce_loss_reductions_and_weight():
    loss = torch.tensor([1.0, 2.0, 3.0])
    w = torch.tensor([0.0, 1.0, 2.0])
    assert torch.equal(L.reduce_loss(loss, "none"), loss)
    assert L.reduce_loss(loss, "sum").item() == 6.0
    assert L.reduce_loss(loss, "mean").item() == 2.0
    # weighted: 0*1 + 1*2 + 2*3 = 8; mean divides by the element count 3
    assert torch.equal(L.reduce_loss(loss, "none", w), torch.tensor([0.0, 2.0, 6.0]))
    assert L.reduce_loss(loss, "sum", w).item() == 8.0
    assert L.reduce_loss(loss, "mean", w).item() == pytest.approx(8 / 3)
    assert L.reduce_loss(loss, "mean", denominator=4).item() == 1.5
    assert L.reduce_loss(loss, "mean", denominator=torch.tensor(2)).item() == 3.0


def test_reduce_loss_broadcast_weight_and_errors():
    loss = torch.ones(2, 3)
    out = L.reduce_loss(loss, "none", torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(out, torch.tensor([[1.0, 2.0, 3.0]] * 2))
    with pytest.raises(ValueError, match="does not broadcast"):
        L.reduce_loss(torch.ones(3), "sum", torch.ones(2, 3))
    with pytest.raises(ValueError, match="'none', 'mean', 'sum'"):
        L.reduce_loss(loss, "avg")


def test_reduce_loss_empty_mean_is_zero():
    x = torch.zeros(0, requires_grad=True)
    out = L.reduce_loss(x * 2, "mean")
    assert out.item() == 0.0
    out.backward()
    assert x.grad.shape == (0,)
    # a zero denominator (nothing counted) is also 0, not NaN
    assert L.reduce_loss(torch.zeros(3), "mean", denominator=torch.tensor(0)).item() == 0.0


# ---------------------------------------------------------------- hand-computed values


def test_smooth_l1_l1_mse_hand_values():
    pred = torch.tensor([0.0, 2.0, -0.5])
    target = torch.tensor([0.5, 0.0, 0.0])
    # diffs -0.5, 2, -0.5; beta=1: 0.5*0.25=0.125, 2-0.5=1.5, 0.125
    expected = torch.tensor([0.125, 1.5, 0.125])
    assert torch.allclose(L.smooth_l1_loss(pred, target, reduction="none"), expected)
    assert L.smooth_l1_loss(pred, target).item() == pytest.approx(1.75 / 3)
    # beta=0 is L1: 0.5 + 2 + 0.5 = 3
    assert L.smooth_l1_loss(pred, target, beta=0.0, reduction="sum").item() == pytest.approx(3.0)
    # beta=1/9: |d| >= 1/9 everywhere -> |d| - 1/18
    assert L.smooth_l1_loss(pred, target, beta=1 / 9, reduction="sum").item() == pytest.approx(3 - 3 / 18)
    # l1: |1-0| + |-2-1| = 1 + 3 -> mean 2; mse: 1 + 9 -> mean 5
    p, t = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0])
    assert L.l1_loss(p, t).item() == 2.0
    assert L.mse_loss(p, t).item() == 5.0
    assert L.mse_loss(p, t, weight=torch.tensor([1.0, 0.0]), reduction="sum").item() == 1.0


def test_cross_entropy_hand_values():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]])
    target = torch.tensor([0, 0, -1])
    # row 0: p=1/2 -> ln 2; row 1: p=3/4 -> ln(4/3); row 2 ignored -> 0
    out = L.cross_entropy(logits, target, ignore_index=-1, reduction="none")
    assert torch.allclose(out, torch.tensor([math.log(2), math.log(4 / 3), 0.0]))
    # mean over the 2 non-ignored rows
    assert L.cross_entropy(logits, target, ignore_index=-1).item() == pytest.approx(math.log(8 / 3) / 2)
    # label smoothing 0.2, K=2: target dist (0.9, 0.1); row 1 -> 0.9 ln(4/3) + 0.1 ln 4
    ls = L.cross_entropy(logits[1:2], target[1:2], label_smoothing=0.2)
    assert ls.item() == pytest.approx(0.9 * math.log(4 / 3) + 0.1 * math.log(4))
    # class_weight (1, 3), targets (0, 1): (1 * ln2 + 3 * ln4) / (1 + 3) = 7 ln2 / 4
    cw = L.cross_entropy(logits[:2], torch.tensor([0, 1]), class_weight=torch.tensor([1.0, 3.0]))
    assert cw.item() == pytest.approx(7 * math.log(2) / 4)
    # per-element weight (2, 0): (2 ln2 + 0) / 2 rows
    w = L.cross_entropy(logits[:2], torch.tensor([0, 0]), weight=torch.tensor([2.0, 0.0]))
    assert w.item() == pytest.approx(math.log(2))


def test_bce_and_focal_hand_values():
    logits = torch.tensor([0.0, math.log(3.0)])
    target = torch.tensor([1.0, 0.0])
    # sigmoid(0)=1/2 -> ln 2; sigmoid(ln 3)=3/4, target 0 -> -ln(1/4) = ln 4
    bce = L.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert torch.allclose(bce, torch.tensor([math.log(2), math.log(4)]))
    # pos_weight 2 doubles the positive term only: 2 ln2 + ln4
    pw = L.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(2.0), reduction="sum")
    assert pw.item() == pytest.approx(4 * math.log(2))
    # focal at logit 0: p_t=1/2, (1-p_t)^2=1/4; positive alpha 0.25 -> ln2/16, negative 0.75 -> 3 ln2/16
    focal = L.sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]), reduction="none")
    assert torch.allclose(focal, torch.tensor([math.log(2) / 16, 3 * math.log(2) / 16]))


def test_iou_losses_hand_values():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    gt = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    # inter 1, union 4+4-1=7, IoU 1/7; enclosing 3x3=9: GIoU = 1/7 - 2/9 = -5/63 -> loss 68/63
    assert L.giou_loss(pred, gt).item() == pytest.approx(68 / 63, rel=1e-5)
    # centres (1,1),(2,2): d^2=2; enclosing diagonal^2 = 18: 1 - 1/7 + 1/9 = 61/63
    assert L.diou_loss(pred, gt).item() == pytest.approx(61 / 63, rel=1e-5)
    # same aspect ratio -> v = 0, CIoU = DIoU
    assert L.ciou_loss(pred, gt).item() == pytest.approx(61 / 63, rel=1e-5)
    # pred 2x1 vs gt 1x2 at the origin: inter 1, union 3, IoU 1/3; centres (1,.5),(.5,1): d^2=.5;
    # enclosing 2x2: c^2=8; v = 4/pi^2 (atan(1/2) - atan(2))^2, alpha = v / (1 - 1/3 + v)
    v = 4 / math.pi**2 * (math.atan(0.5) - math.atan(2.0)) ** 2
    expected = 1 - 1 / 3 + 0.5 / 8 + v / (2 / 3 + v) * v
    ciou = L.ciou_loss(torch.tensor([[0.0, 0.0, 2.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 2.0]]))
    assert ciou.item() == pytest.approx(expected, rel=1e-5)
    for fn in (L.giou_loss, L.diou_loss, L.ciou_loss):
        assert fn(pred, pred).item() == pytest.approx(0.0, abs=1e-6)


def test_multiclass_hinge_hand_values():
    scores = torch.tensor([[2.0, -0.5, 0.3], [0.5, 1.0, -1.0]])
    target = torch.tensor([0, 0])
    # one-vs-rest, row 0 signs (+,-,-): max(0,1-2)=0, max(0,1-0.5)=0.5, max(0,1+0.3)=1.3
    # row 1: max(0,1-0.5)=0.5, max(0,1+1)=2, max(0,1-1)=0
    ovr = L.multiclass_hinge_loss(scores, target, reduction="none")
    assert torch.allclose(ovr, torch.tensor([[0.0, 0.5, 1.3], [0.5, 2.0, 0.0]]))
    assert L.multiclass_hinge_loss(scores, target).item() == pytest.approx(4.3 / 6)
    # a target outside [0, K) is negative for every class: max(0, 1+2), 0.5, 1.3
    bg = L.multiclass_hinge_loss(scores[:1], torch.tensor([3]), reduction="none")
    assert torch.allclose(bg, torch.tensor([[3.0, 0.5, 1.3]]))
    # a [K] weight masks a class column: row sums without column 2 -> (0+0.5) + (0.5+2) = 3
    masked = L.multiclass_hinge_loss(scores, target, weight=torch.tensor([1.0, 1.0, 0.0]), reduction="sum")
    assert masked.item() == pytest.approx(3.0)
    # Crammer-Singer: row 0: max(0, 1+0.3-2)=0; row 1: max(0, 1+1-0.5)=1.5
    cs = L.multiclass_hinge_loss(scores, target, mode="crammer_singer", reduction="none")
    assert torch.allclose(cs, torch.tensor([0.0, 1.5]))
    # all scores negative: best other is -1 -> max(0, 1 - 1 + 0.5) = 0.5
    neg = torch.tensor([[-0.5, -1.0, -3.0]])
    cs_neg = L.multiclass_hinge_loss(neg, torch.tensor([0]), mode="crammer_singer")
    assert cs_neg.item() == pytest.approx(0.5)
    # Weston-Watkins, sum over wrong classes / K: row 0: (max(0,1-0.5-2) + max(0,1+0.3-2)) / 3 = 0;
    # row 1: (max(0,1+1-0.5) + max(0,1-1-0.5)) / 3 = 0.5
    ww = L.multiclass_hinge_loss(scores, target, mode="weston_watkins", reduction="none")
    assert torch.allclose(ww, torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="mode"):
        L.multiclass_hinge_loss(scores, target, mode="svm")


def test_log_and_exponential_hand_values():
    f = torch.tensor([0.0, 2.0, 100.0])
    y = torch.tensor([1.0, -1.0, -1.0])
    # ln(1+e^0) = ln2; ln(1+e^2); ln(1+e^100) ~= 100 (finite thanks to softplus)
    out = L.log_loss(f, y, reduction="none")
    assert torch.allclose(out, torch.tensor([math.log(2), math.log(1 + math.e**2), 100.0]))
    # exp(-y f): f=ln2, y=-1 -> 2; y=+1 -> 1/2
    g = torch.tensor([math.log(2.0), math.log(2.0)])
    assert torch.allclose(
        L.exponential_loss(g, torch.tensor([-1, 1]), reduction="none"),
        torch.tensor([2.0, 0.5]),
    )


# ---------------------------------------------------------------- parity with torch / torchvision


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_parity_elementwise(reduction):
    a, b = _randn(4, 3, seed=1), _randn(4, 3, seed=2)
    for beta in (1.0, 1 / 9, 0.0):
        ref = F.smooth_l1_loss(a, b, beta=beta, reduction=reduction)
        assert torch.allclose(L.smooth_l1_loss(a, b, beta=beta, reduction=reduction), ref)
    assert torch.allclose(L.l1_loss(a, b, reduction=reduction), F.l1_loss(a, b, reduction=reduction))
    assert torch.allclose(L.mse_loss(a, b, reduction=reduction), F.mse_loss(a, b, reduction=reduction))
    t = (b > 0).float()
    pw = torch.tensor([1.0, 2.0, 0.5])
    ref = F.binary_cross_entropy_with_logits(a, t, pos_weight=pw, reduction=reduction)
    assert torch.allclose(
        L.binary_cross_entropy_with_logits(a, t, pos_weight=pw, reduction=reduction),
        ref,
    )
    ref = torchvision.ops.sigmoid_focal_loss(a, t, alpha=0.5, gamma=1.0, reduction=reduction)
    assert torch.allclose(L.sigmoid_focal_loss(a, t, alpha=0.5, gamma=1.0, reduction=reduction), ref)
    y = t * 2 - 1  # log loss == BCE on (y + 1) / 2
    assert torch.allclose(
        L.log_loss(a, y, reduction=reduction),
        F.binary_cross_entropy_with_logits(a, t, reduction=reduction),
    )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_parity_iou_losses(reduction):
    p, g = _boxes(5, seed=3), _boxes(5, seed=7)
    pairs = [
        (L.giou_loss, torchvision.ops.generalized_box_iou_loss),
        (L.diou_loss, torchvision.ops.distance_box_iou_loss),
        (L.ciou_loss, torchvision.ops.complete_box_iou_loss),
    ]
    for ours, ref in pairs:
        assert torch.allclose(ours(p, g, reduction=reduction), ref(p, g, reduction=reduction))
    w = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.5])
    ref = (torchvision.ops.generalized_box_iou_loss(p, g) * w).sum()
    assert torch.allclose(L.giou_loss(p, g, weight=w, reduction="sum"), ref)


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_parity_cross_entropy(ls):
    logits, target = _randn(6, 4, seed=4), torch.tensor([0, 3, -1, 2, 1, -1])
    cw = torch.tensor([1.0, 2.0, 0.5, 3.0])
    for class_weight in (None, cw):
        for reduction in ("none", "mean", "sum"):
            kw = {"ignore_index": -1, "label_smoothing": ls, "reduction": reduction}
            ref = F.cross_entropy(logits, target, weight=class_weight, **kw)
            assert torch.allclose(L.cross_entropy(logits, target, class_weight=class_weight, **kw), ref)
    # spatial logits [N, K, H, W]
    logits4, target3 = (
        _randn(2, 3, 2, 2, seed=5),
        torch.tensor([[[0, 1], [2, 0]], [[1, 1], [-100, 2]]]),
    )
    assert torch.allclose(L.cross_entropy(logits4, target3), F.cross_entropy(logits4, target3))


def test_parity_weston_watkins():
    scores, target = _randn(5, 4, seed=6), torch.tensor([0, 1, 2, 3, 1])
    for reduction in ("none", "mean", "sum"):
        ours = L.multiclass_hinge_loss(scores, target, margin=0.5, mode="weston_watkins", reduction=reduction)
        assert torch.allclose(ours, F.multi_margin_loss(scores, target, margin=0.5, reduction=reduction))


# ---------------------------------------------------------------- shapes, empties, gradients, dtypes


def test_shape_mismatch_and_bad_args():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3, 2\)"):
        L.smooth_l1_loss(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="same shape"):
        L.giou_loss(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\[\*, 4\]"):
        L.giou_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="N, K"):
        L.cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        L.cross_entropy(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="reduction"):
        L.mse_loss(torch.zeros(2), torch.zeros(2), reduction="max")
    with pytest.raises(ValueError, match="beta"):
        L.smooth_l1_loss(torch.zeros(2), torch.zeros(2), beta=-1.0)


def _all_cases(n):
    """(name, fn, inputs requiring grad, other args) for every loss, with n samples."""
    x = _randn(n, 4, seed=8)
    labels = torch.arange(n) % 4
    signs = torch.where(_randn(n, 4, seed=9) > 0, 1.0, -1.0)
    boxes_p, boxes_g = _boxes(n, seed=10), _boxes(n, seed=11)
    return [
        (L.smooth_l1_loss, x, (x.flip(0),)),
        (L.l1_loss, x, (x.flip(0),)),
        (L.mse_loss, x, (x.flip(0),)),
        (L.cross_entropy, x, (labels,)),
        (L.binary_cross_entropy_with_logits, x, ((signs > 0).float(),)),
        (L.sigmoid_focal_loss, x, ((signs > 0).float(),)),
        (L.giou_loss, boxes_p, (boxes_g,)),
        (L.diou_loss, boxes_p, (boxes_g,)),
        (L.ciou_loss, boxes_p, (boxes_g,)),
        (L.multiclass_hinge_loss, x, (labels,)),
        (
            lambda s, t, **kw: L.multiclass_hinge_loss(s, t, mode="crammer_singer", **kw),
            x,
            (labels,),
        ),
        (L.log_loss, x, (signs,)),
        (L.exponential_loss, x, (signs,)),
    ]


@pytest.mark.parametrize("case", range(13))
def test_empty_mean_is_zero_and_grads_finite(case):
    fn, pred, args = _all_cases(3)[case]
    pred = pred.clone().requires_grad_(True)
    fn(pred, *args).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    fn0, pred0, args0 = _all_cases(0)[case]
    pred0 = pred0.clone().requires_grad_(True)
    out = fn0(pred0, *args0)
    assert out.shape == () and out.item() == 0.0
    out.backward()
    assert torch.isfinite(pred0.grad).all()
    assert fn0(pred0, *args0, reduction="sum").item() == 0.0


def test_cross_entropy_all_ignored_is_zero_with_zero_grad():
    logits = _randn(3, 4, seed=12).requires_grad_(True)
    out = L.cross_entropy(logits, torch.full((3,), -1), ignore_index=-1, class_weight=torch.ones(4))
    out.backward()
    assert out.item() == 0.0 and torch.equal(logits.grad, torch.zeros(3, 4))


def test_iou_losses_run_in_float32_under_autocast():
    p, g = _boxes(3, seed=13).bfloat16(), _boxes(3, seed=14).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = L.ciou_loss(p, g, reduction="none")
    assert out.dtype == torch.float32
    ref = torchvision.ops.complete_box_iou_loss(p.float(), g.float())
    assert torch.allclose(out, ref)
