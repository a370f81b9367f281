"""Detection hot-path ops: detkit (batched) vs torchvision (per image), same inputs, one process.

    python benchmarks/bench_ops.py --device cpu
    python benchmarks/bench_ops.py --device cuda --batch-size 8

Ops: anchor labelling + sampling + box encoding for a batch (RPN targets), RPN proposal
filtering, NMS of 20,000 boxes per image in 5 level groups (detkit: one call for the batch with
(image, level) groups; torchvision's RPN: one call per image), multi-level RoIAlign, the CPU
RoIAlign backward (large RoIs on fine maps and FPN-like RoIs), mask pasting. Prints a table
of ms per call and ratios (torchvision time / detkit time: > 1 means detkit is faster) and JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.rpn import AnchorGenerator as TVAnchors
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou

from detkit.heads import RoIPooler, paste_masks
from detkit.heads.roi_align_cpu import roi_align_backward_cpu
from detkit.matching import AnchorGenerator, BalancedSampler, BoxCoder, Matcher
from detkit.proposals.rpn import RPN
from detkit.proposals.rpn import RPNHead as DKHead
from detkit.structures import PackedTargets, batched_box_iou


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(dk_fn, tv_fn, device, iters, warmup=2):
    """Median ms per call of each, the two calls alternating so that load changes hit both."""
    for _ in range(warmup):
        dk_fn()
        tv_fn()
    _sync(device)
    times = ([], [])
    for _ in range(iters):
        for fn, out in ((dk_fn, times[0]), (tv_fn, times[1])):
            start = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1000, statistics.median(times[1]) * 1000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    n, h, w = args.batch_size, args.height, args.width
    g = torch.Generator().manual_seed(0)
    strides = [4, 8, 16, 32, 64]
    sizes = [((32,), (64,), (128,), (256,), (512,))][0]
    feat_sizes = [(-(-h // s), -(-w // s)) for s in strides]
    features = {f"p{i + 2}": torch.randn(n, 256, fh, fw, generator=g).to(dev) for i, (fh, fw) in enumerate(feat_sizes)}
    # ground truth: 10 boxes per image
    xy = torch.rand(n, 10, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = (torch.rand(n, 10, 2, generator=g) * 0.3 + 0.05) * torch.tensor([w, h])
    gt = torch.cat([xy, xy + wh], -1).to(dev)
    targets = [{"boxes": b, "labels": torch.ones(10, dtype=torch.int64, device=dev)} for b in gt]
    packed = PackedTargets.from_list(targets)
    results = {}

    # --- RPN targets: IoU labelling, sampling, encoding
    dk_anchors = AnchorGenerator(sizes, [(0.5, 1.0, 2.0)] * 5, strides).to(dev)
    anchors = torch.cat(dk_anchors(feat_sizes, device=dev))
    dk_matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    dk_sampler, dk_coder = BalancedSampler(256, 0.5), BoxCoder()
    tv_matcher = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)
    tv_sampler, tv_coder = tv_utils.BalancedPositiveNegativeSampler(256, 0.5), tv_utils.BoxCoder((1.0, 1.0, 1.0, 1.0))

    def dk_targets():
        boxes, _, valid = packed.padded()
        idx, labels = dk_matcher(batched_box_iou(boxes, anchors.expand(n, -1, -1)), valid)
        pos, neg = dk_sampler(labels)
        matched = boxes.gather(1, idx[..., None].expand(-1, -1, 4))
        return dk_coder.encode(matched[pos], anchors.expand(n, -1, -1)[pos])

    def tv_targets():
        out = []
        labels_all, matched_all = [], []
        for b in gt:
            idx = tv_matcher(box_iou(b, anchors))
            matched_all.append(b[idx.clamp(min=0)])
            lab = (idx >= 0).float()
            lab[idx == tv_matcher.BELOW_LOW_THRESHOLD] = 0.0
            lab[idx == tv_matcher.BETWEEN_THRESHOLDS] = -1.0
            labels_all.append(lab)
        pos, neg = tv_sampler(labels_all)
        for p, m in zip(pos, matched_all):
            keep = torch.nonzero(p).squeeze(1)
            out.append(tv_coder.encode_single(m[keep], anchors[keep]))
        return out

    results["rpn_targets"] = bench(dk_targets, tv_targets, dev, args.iters)

    # --- RPN proposal filtering (top-k per level, decode, clip, NMS, post top-k)
    num_a = 3
    dk_rpn = RPN(DKHead(256, num_a), dk_anchors, in_features=list(features)).to(dev).eval()
    tv_rpn = (
        RegionProposalNetwork(
            TVAnchors(sizes, ((0.5, 1.0, 2.0),) * 5),
            RPNHead(256, num_a),
            0.7,
            0.3,
            256,
            0.5,
            dict(training=2000, testing=1000),
            dict(training=2000, testing=1000),
            0.7,
        )
        .to(dev)
        .eval()
    )
    tv_rpn.head.load_state_dict({k.replace("conv.0.", "conv.0.0."): v for k, v in dk_rpn.head.state_dict().items()})
    with torch.no_grad():
        logits, deltas, counts = dk_rpn.head(list(features.values()))
        proposals = dk_coder.decode(deltas, anchors.expand(n, -1, -1))
    image_sizes = torch.tensor([[h, w]] * n, device=dev)
    tv_props = proposals

    def dk_filter():
        return dk_rpn.filter_proposals(proposals, logits, counts, image_sizes)

    def tv_filter():
        return tv_rpn.filter_proposals(tv_props, logits.reshape(-1, 1), [(h, w)] * n, counts)

    results["rpn_filter"] = bench(dk_filter, tv_filter, dev, args.iters)

    # --- NMS: 20,000 boxes per image in 5 level groups, IoU 0.7
    per_img = 20_000
    xy = torch.rand(n, per_img, 2, generator=g) * torch.tensor([w * 0.9, h * 0.9])
    wh = torch.rand(n, per_img, 2, generator=g) * 0.2 * torch.tensor([w, h]) + 4
    nms_boxes = torch.cat([xy, xy + wh], -1).to(dev)
    nms_scores = torch.rand(n, per_img, generator=g).to(dev)
    nms_levels = torch.randint(0, 5, (n, per_img), generator=g).to(dev)
    groups = (torch.arange(n, device=dev)[:, None] * 5 + nms_levels).reshape(-1)

    def dk_nms():
        return batched_nms(nms_boxes.reshape(-1, 4), nms_scores.reshape(-1), groups, 0.7)

    def tv_nms():
        return [batched_nms(nms_boxes[i], nms_scores[i], nms_levels[i], 0.7) for i in range(n)]

    results["nms"] = bench(dk_nms, tv_nms, dev, args.iters)

    # --- multi-level RoIAlign of 512 RoIs per image
    rois, batch_idx = dk_filter()
    dk_pool = RoIPooler(["p2", "p3", "p4", "p5"], [4, 8, 16, 32])
    tv_pool = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2)
    per_image = [rois[batch_idx == i] for i in range(n)]
    shapes = [(h, w)] * n
    results["roi_align"] = bench(
        lambda: dk_pool(features, rois, batch_idx), lambda: tv_pool(features, per_image, shapes), dev, args.iters
    )

    # --- CPU RoIAlign backward: detkit's (cost model: matmuls or torchvision's kernel) vs
    # torchvision's kernel; RoI sizes as fractions of an 800 px image side, RoI counts scaled by
    # the image area relative to 800x1216 (the counts below at --height 800 --width 1216)
    if dev.type == "cpu":
        area = min(1.0, h * w / (800 * 1216))
        for name, stride, full, (lo, hi) in (
            ("s4_large", 4, 128, (200, 500)),
            ("s8_large", 8, 128, (300, 800)),
            ("s8_fpn", 8, 512, (32, 128)),
            ("s16_fpn", 16, 512, (64, 256)),
        ):
            fh, fw = -(-h // stride), -(-w // stride)
            num = max(8, round(full * area))
            side = torch.tensor([lo, hi]) * min(h, w) / 800
            wh = side[0] + torch.rand(num, 2, generator=g) * (side[1] - side[0])
            xy = torch.rand(num, 2, generator=g) * (torch.tensor([w, h]) - wh).clamp(min=1)
            bw_rois = torch.cat([torch.zeros(num, 1), xy, xy + wh], 1)
            grad = torch.randn(num, 256, 7, 7, generator=g)
            shape = (1, 256, fh, fw)
            results[f"roi_align_backward_{name}"] = bench(
                lambda r=bw_rois, gr=grad, sc=1.0 / stride, sh=shape: roi_align_backward_cpu(gr, r, sc, 2, False, sh),
                lambda r=bw_rois, gr=grad, sc=1.0 / stride, sh=shape: torch.ops.torchvision._roi_align_backward(
                    gr, r, sc, 7, 7, *sh, 2, False
                ),
                dev,
                args.iters,
            )

    # --- mask pasting: 100 masks of 28x28 per image into the image
    masks = torch.rand(100, 28, 28, generator=g).to(dev)
    boxes = per_image[0][:100]
    masks = masks[: boxes.shape[0]]
    results["paste_masks"] = bench(
        lambda: paste_masks(masks, boxes, (h, w)),
        lambda: paste_masks_in_image(masks[:, None], boxes, (h, w)) > 0.5,
        dev,
        args.iters,
    )

    print(f"\nops on {dev}, batch {n}, {h}x{w}, torch {torch.__version__}")
    print("| op | detkit ms | torchvision ms | speed-up |\n|---|---|---|---|")
    for op, (dk_ms, tv_ms) in results.items():
        print(f"| {op} | {dk_ms:.2f} | {tv_ms:.2f} | {tv_ms / dk_ms:.2f}x |")
    print(json.dumps({op: {"detkit_ms": a, "torchvision_ms": b, "speedup": b / a} for op, (a, b) in results.items()}))


if __name__ == "__main__":
    main()
