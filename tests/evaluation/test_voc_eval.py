"""Pascal VOC AP: hand-computed cases, the devkit's definitions re-written plainly, the CLI."""

import json
import os

import cv2
import numpy as np
import pytest

from detkit.cli import evaluate as evaluate_command
from detkit.data import VocDetection
from detkit.evaluation import VOCGroundTruth, evaluate_voc, voc_ap

CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}, {"id": 4, "name": "d"}]


def _gt(annotations, images=(1, 2)):
    anns = [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": list(b), "iscrowd": 0, "difficult": int(d)}
        for k, (i, c, b, d) in enumerate(annotations)
    ]
    return {"images": [{"id": i, "width": 100, "height": 100} for i in images], "annotations": anns, "categories": CATS}


def _det(image_id, cat, box, score):
    return {"image_id": image_id, "category_id": cat, "bbox": list(box), "score": score}


def test_voc_ap_of_a_hand_made_curve():
    recall, precision = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert voc_ap(recall, precision, "voc07") == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    assert voc_ap(recall, precision, "voc2010") == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert voc_ap(np.array([0.2]), np.array([1.0]), "voc07") == pytest.approx(3 / 11)  # t = 0, 0.1, 0.2
    with pytest.raises(ValueError, match="unknown VOC metric"):
        voc_ap(recall, precision, "voc12")


def test_difficult_duplicates_missing_detections_and_classes_without_ground_truth():
    gt = VOCGroundTruth.from_coco(
        _gt([
            (1, 1, (0, 0, 10, 10), False),  # a: found, then found again (duplicate)
            (1, 1, (20, 20, 10, 10), True),  # a, difficult: a detection on it counts for nothing
            (2, 1, (0, 0, 10, 10), False),  # a: found last
            (1, 2, (0, 0, 10, 10), False),  # b: never detected
            (2, 4, (0, 0, 10, 10), False),  # d: IoU exactly 0.5 is not a match, 0.6 is
        ])
    )  # fmt: skip
    dets = [
        _det(1, 1, (0, 0, 10, 10), 0.9),  # TP
        _det(1, 1, (0, 0, 10, 10), 0.8),  # FP (duplicate)
        _det(1, 1, (20, 20, 10, 10), 0.7),  # ignored (difficult)
        _det(1, 1, (50, 50, 10, 10), 0.6),  # FP
        _det(2, 1, (0, 0, 10, 10), 0.5),  # TP
        _det(1, 3, (0, 0, 10, 10), 0.9),  # class c has no ground truth
        _det(2, 4, (0, 0, 10, 5), 0.9),  # IoU 0.5: FP
        _det(2, 4, (0, 0, 10, 6), 0.8),  # IoU 0.6: TP
    ]
    # a: tp 1 1 1 1 2, fp 0 1 1 2 2 over 2 positives -> recall .5 .5 .5 .5 1, precision 1 .5 .5 1/3 .5
    r07 = evaluate_voc(gt, dets, "voc07")
    assert r07.per_class_ap["a"] == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    assert r07.per_class_ap["b"] == 0.0 and r07.per_class_ap["c"] is None
    assert r07.per_class_ap["d"] == pytest.approx(0.5)  # recall 0 1, precision 0 .5
    assert r07.mAP == pytest.approx(((6 + 2.5) / 11 + 0 + 0.5) / 3)
    assert r07.num_positives == {"a": 2, "b": 1, "c": 0, "d": 1}
    r10 = evaluate_voc(gt, dets, "voc2010")
    assert r10.per_class_ap["a"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert r10.per_class_ap["d"] == pytest.approx(0.5) and r10.mAP == pytest.approx((0.75 + 0 + 0.5) / 3)
    assert r10.to_dict() == {"metric": "voc2010", "mAP": r10.mAP, "per_class_ap": r10.per_class_ap}
    assert "mAP" in r10.summary and "-" in r10.summary.splitlines()[4]  # class c: no AP

    # the best-overlapping object already taken: a false positive even if another object overlaps > 0.5
    gt = VOCGroundTruth.from_coco(_gt([(1, 1, (0, 0, 10, 10), False), (1, 1, (0, 0, 10, 11), False)]))
    r = evaluate_voc(gt, [_det(1, 1, (0, 0, 10, 10), 0.9), _det(1, 1, (0, 0, 10, 10), 0.8)], "voc2010")
    assert r.per_class_ap["a"] == pytest.approx(0.5)  # tp 1 0 / 2 positives: recall .5, precision 1 then .5

    with pytest.raises(ValueError, match="image ids not in"):
        evaluate_voc(gt, [_det(9, 1, (0, 0, 1, 1), 0.5)])
    with pytest.raises(ValueError, match="category ids not in"):
        evaluate_voc(gt, [_det(1, 7, (0, 0, 1, 1), 0.5)])


def test_iscrowd_without_difficult_flag_counts_as_difficult_and_img_ids_restrict():
    data = _gt([(1, 1, (0, 0, 10, 10), False), (2, 1, (0, 0, 10, 10), False)])
    del data["annotations"][1]["difficult"]
    data["annotations"][1]["iscrowd"] = 1
    gt = VOCGroundTruth.from_coco(data)
    r = evaluate_voc(gt, [_det(1, 1, (0, 0, 10, 10), 0.9), _det(2, 1, (0, 0, 10, 10), 0.95)])
    assert r.per_class_ap["a"] == 1.0 and r.num_positives["a"] == 1
    r = evaluate_voc(gt, [_det(1, 1, (0, 0, 10, 10), 0.9)], img_ids=[2])
    assert r.per_class_ap["a"] is None and r.num_images == 1 and r.num_detections["a"] == 0


# ---------------------------------------------------------------- the devkit, written plainly


def _devkit_ap(gt_by_image, dets, metric, inclusive):
    """One class, as the VOC devkit's voc_eval: gt_by_image {image: [(box, difficult)]},
    dets [(image, score, box)] with boxes in the ground truth's convention."""
    plus = 1.0 if inclusive else 0.0
    npos = sum(1 for objs in gt_by_image.values() for _, d in objs if not d)
    taken = {img: [False] * len(objs) for img, objs in gt_by_image.items()}
    tp, fp = [], []
    for img, _, bb in sorted(dets, key=lambda d: -d[1]):
        best, jbest = -1.0, -1
        for j, (g, _) in enumerate(gt_by_image.get(img, [])):
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + plus
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + plus
            if iw > 0 and ih > 0:
                inter = iw * ih
                union = (bb[2] - bb[0] + plus) * (bb[3] - bb[1] + plus) + (g[2] - g[0] + plus) * (g[3] - g[1] + plus)
                if inter / (union - inter) > best:
                    best, jbest = inter / (union - inter), j
        if best > 0.5:
            if gt_by_image[img][jbest][1]:
                tp.append(0), fp.append(0)
            elif not taken[img][jbest]:
                taken[img][jbest] = True
                tp.append(1), fp.append(0)
            else:
                tp.append(0), fp.append(1)
        else:
            tp.append(0), fp.append(1)
    if npos == 0:
        return None
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec = ctp / npos
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    if metric == "voc07":
        return sum((max(prec[rec >= t]) if (rec >= t).any() else 0.0) for t in np.arange(0.0, 1.1, 0.1)) / 11
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def _random_case(seed, num_images=40, num_classes=3):
    rng = np.random.default_rng(seed)
    anns, dets = [], []
    for img in range(1, num_images + 1):
        for _ in range(rng.integers(0, 5)):
            cat = int(rng.integers(1, num_classes + 1))
            x, y, w, h = rng.uniform(0, 60), rng.uniform(0, 60), rng.uniform(4, 40), rng.uniform(4, 40)
            anns.append((img, cat, (x, y, w, h), bool(rng.random() < 0.2)))
            for _ in range(rng.integers(0, 3)):  # near-hits, some duplicates
                jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
                dets.append(_det(img, cat, tuple(np.array([x, y, w, h]) + jitter), float(rng.random())))
        for _ in range(rng.integers(0, 3)):  # background
            box = (rng.uniform(0, 80), rng.uniform(0, 80), rng.uniform(2, 20), rng.uniform(2, 20))
            dets.append(_det(img, int(rng.integers(1, num_classes + 1)), box, float(rng.random())))
    return anns, dets


@pytest.mark.parametrize("metric", ["voc07", "voc2010"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_devkit_definition_on_random_data(seed, metric):
    anns, dets = _random_case(seed)
    gt = VOCGroundTruth.from_coco(_gt(anns, images=range(1, 41)))
    result = evaluate_voc(gt, dets, metric)
    for cat, name in [(1, "a"), (2, "b"), (3, "c"), (4, "d")]:
        by_image = {}
        for img, c, (x, y, w, h), d in anns:
            if c == cat:
                by_image.setdefault(img, []).append(((x, y, x + w, y + h), d))
        mine = [(d["image_id"], d["score"], xywh_xyxy(d["bbox"])) for d in dets if d["category_id"] == cat]
        expected = _devkit_ap(by_image, mine, metric, inclusive=False)
        if expected is None:
            assert result.per_class_ap[name] is None
        else:
            assert result.per_class_ap[name] == pytest.approx(expected, abs=1e-12), name


def xywh_xyxy(b):
    return (b[0], b[1], b[0] + b[2], b[1] + b[3])


# ---------------------------------------------------------------- VOC XML and the CLI


def _voc_root(tmp_path, anns, num_images):
    root = tmp_path / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    names = [f"{i:06d}" for i in range(1, num_images + 1)]
    for i, name in enumerate(names, 1):
        objs = "".join(
            f"<object><name>{'abcd'[c - 1]}</name><difficult>{int(d)}</difficult><bndbox>"
            f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for img, c, (x1, y1, x2, y2), d in anns
            if img == i
        )
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><size><width>100</width><height>100</height></size>{objs}</annotation>"
        )
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), np.zeros((100, 100, 3), np.uint8))
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.mark.parametrize("metric", ["voc07", "voc2010"])
def test_voc_xml_inclusive_pixels_agree_with_detkits_export(tmp_path, metric):
    """XML boxes are integer, 1-based and inclusive; detkit reads them as (x1 - 1, y1 - 1, x2, y2).
    Scoring detkit's detections against the XML with the devkit's +1 and against detkit's COCO
    export with continuous boxes gives the same AP, and both equal the devkit definition."""
    rng = np.random.default_rng(3)
    anns = []
    for img in range(1, 21):
        for _ in range(rng.integers(1, 4)):
            x1, y1 = (int(v) for v in rng.integers(1, 60, 2))
            anns.append(
                (
                    img,
                    int(rng.integers(1, 4)),
                    (x1, y1, x1 + int(rng.integers(3, 35)), y1 + int(rng.integers(3, 35))),
                    bool(rng.random() < 0.2),
                )
            )  # noqa: E501
    root = _voc_root(tmp_path, anns, 20)
    classes = ["a", "b", "c", "d"]
    dets = []
    for img, c, (x1, y1, x2, y2), _ in anns:  # detkit-style detections: 0-based continuous
        for _ in range(2):
            box = np.array([x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]) + rng.normal(0, 2, 4)
            dets.append(_det(img, c, tuple(box), float(rng.random())))
    from_xml = evaluate_voc(VOCGroundTruth.from_voc(root, "test", classes), dets, metric)
    export = VocDetection(root, "test", class_names=classes).to_coco_json(tmp_path / "gt.json")
    from_json = evaluate_voc(VOCGroundTruth.from_coco(export), dets, metric)
    for name in classes:
        a, b = from_xml.per_class_ap[name], from_json.per_class_ap[name]
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-9)
        by_image = {}
        for img, c, box, d in anns:
            if classes[c - 1] == name:
                by_image.setdefault(img, []).append((box, d))
        mine = [
            (d["image_id"], d["score"], (d["bbox"][0] + 1, d["bbox"][1] + 1, *xywh_xyxy(d["bbox"])[2:]))
            for d in dets
            if d["category_id"] == classes.index(name) + 1
        ]
        expected = _devkit_ap(by_image, mine, metric, inclusive=True)
        assert (a is None and expected is None) or a == pytest.approx(expected, abs=1e-9)


def test_cli_voc_metrics_and_duplicated_image_detections(tmp_path, capsys):
    """Perfect detections score mAP 1; the same detections of one image given twice (what a
    substituted unreadable image produced) score less."""
    anns = [(img, 1 + img % 2, (10 + img, 10, 40, 50), False) for img in range(1, 11)]
    gt_path, pred_path, out = tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "m.json"
    gt_path.write_text(
        json.dumps(
            _gt(
                [(i, c, (x - 1, y - 1, x2 - x + 1, y2 - y + 1), d) for i, c, (x, y, x2, y2), d in anns],
                images=range(1, 11),
            )
        )
    )  # noqa: E501
    perfect = [_det(i, c, (x - 1, y - 1, x2 - x + 1, y2 - y + 1), 0.9) for i, c, (x, y, x2, y2), _ in anns]
    pred_path.write_text(json.dumps(perfect))
    args = ["--metric", "voc07", "--annotations", str(gt_path), "--predictions", str(pred_path), "--output", str(out)]
    assert evaluate_command.main(args) == 0
    assert json.loads(out.read_text()) == {
        "metric": "voc07",
        "mAP": 1.0,
        "per_class_ap": {"a": 1.0, "b": 1.0, "c": None, "d": None},
    }  # noqa: E501
    assert "mAP" in capsys.readouterr().out

    pred_path.write_text(json.dumps(perfect + [dict(perfect[0], score=0.95)]))
    assert evaluate_command.main(args) == 0
    assert json.loads(out.read_text())["mAP"] < 1.0

    root = _voc_root(tmp_path, anns, 10)  # the same ground truth as VOC XML
    pred_path.write_text(json.dumps(perfect))
    xml_args = ["--metric", "voc2010", "--voc-root", str(root), "--image-set", "test", "--class-names", "a,b,c,d"]
    assert evaluate_command.main([*xml_args, "--predictions", str(pred_path), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["mAP"] == 1.0

    capsys.readouterr()
    assert evaluate_command.main(["--metric", "voc07", "--predictions", str(pred_path)]) == 2
    assert "--voc-root" in capsys.readouterr().err
    assert evaluate_command.main(["--voc-root", str(root), "--predictions", str(pred_path)]) == 2  # coco + voc root
    assert evaluate_command.main([*args, "--iou-type", "segm"]) == 2
    pred_path.write_text(json.dumps([_det(99, 1, (0, 0, 5, 5), 0.5)]))
    assert evaluate_command.main(args) == 1
    assert "image ids not in" in capsys.readouterr().err


# ---------------------------------------------------------------- DetectionModule(eval_metric="voc07")


def test_detection_module_logs_voc_map_and_a_checkpoint_can_monitor_it(tmp_path):
    import torch
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    from detkit.engine import DetectionCheckpoint, DetectionModule, ShapesDataModule

    torch.manual_seed(0)
    fast = {"rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "roi_batch_size_per_image": 32}
    module = DetectionModule(num_classes=3, model_kwargs=fast, eval_metric="voc07", num_visualize=0, warmup_steps=1)
    ckpt = DetectionCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/voc07_mAP", mode="max",
                               filename="best-{val/voc07_mAP:.4f}", auto_insert_metric_name=False)  # fmt: skip
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=2, limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=0,
        logger=CSVLogger(str(tmp_path), name="t"), callbacks=[ckpt], enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    data = ShapesDataModule(root=str(tmp_path / "shapes"), num_train=8, num_val=8, batch_size=4, image_size=128)
    trainer.fit(module, datamodule=data)
    logged = float(trainer.callback_metrics["val/voc07_mAP"])
    assert "val/AP" in trainer.callback_metrics  # COCO metrics stay: default monitors keep working

    with open(os.path.join(module.last_eval_dir, "metrics.json")) as f:
        saved = json.load(f)["voc07"]
    with open(os.path.join(module.last_eval_dir, "predictions.json")) as f:
        predictions = json.load(f)
    again = evaluate_voc(VOCGroundTruth.from_coco(data.val_ann_file), predictions, "voc07")
    assert saved["mAP"] == pytest.approx(again.mAP) and logged == pytest.approx(again.mAP, abs=1e-6)
    assert set(saved["per_class_ap"]) == set(data.class_names)
    assert os.path.basename(ckpt.best_model_path) == f"best-{logged:.4f}.ckpt"
    with pytest.raises(ValueError, match="eval_metric"):
        DetectionModule(num_classes=3, eval_metric="voc12")


def test_missing_weights_files_name_the_config_key(tmp_path):
    """The VOC configs point at ImageNet weights users download; without them the error names the key to set."""
    from detkit.engine import DetectionModule

    missing = str(tmp_path / "vgg16.pth")
    with pytest.raises(FileNotFoundError, match=r"model\.model_kwargs\.backbone_weights: file not found: .*null"):
        DetectionModule(model_name="fast_rcnn_tiny", num_classes=20, model_kwargs={"backbone_weights": missing})
    with pytest.raises(FileNotFoundError, match=r"model\.weights: file not found"):
        DetectionModule(model_name="fast_rcnn_tiny", num_classes=20, weights=missing)


def test_validation_skips_and_counts_an_unreadable_image(tmp_path):
    """skip_invalid: the unreadable image is left out of the evaluation (not replaced by its
    neighbour, whose detections would count twice) and the count is reported."""
    import torch
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    from detkit.engine import DetectionModule, VocDataModule

    anns = [(img, 1, (10, 10, 60, 70), False) for img in range(1, 6)]
    root = _voc_root(tmp_path, anns, 5)
    noise = np.random.default_rng(0).integers(0, 255, (100, 100, 3), np.uint8)
    data = cv2.imencode(".jpg", noise)[1].tobytes()
    (root / "JPEGImages" / "000003.jpg").write_bytes(data[: len(data) // 2])  # header intact, data cut
    torch.manual_seed(0)
    module = DetectionModule(num_classes=4, eval_metric="voc07", num_visualize=0, compute_val_loss=False)
    dm = VocDataModule(root=str(root), val_set="test", class_names=["a", "b", "c", "d"], skip_invalid=True,
                       batch_size=2, num_workers=0)  # fmt: skip
    trainer = Trainer(accelerator="cpu", logger=CSVLogger(str(tmp_path), name="v"), enable_progress_bar=False,
                      enable_model_summary=False)  # fmt: skip
    predicted, real_predict = [], module.model.predict
    module.model.predict = lambda images, **kw: predicted.append(len(images)) or real_predict(images, **kw)
    trainer.validate(module, datamodule=dm)
    assert sum(predicted) == 4  # a stand-in for the unreadable image would make it 5
    with open(os.path.join(module.last_eval_dir, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(module.last_eval_dir, "predictions.json")) as f:
        seen = {p["image_id"] for p in json.load(f)}
    assert metrics["skipped_images"] == 1 and seen <= {1, 2, 4, 5}
    assert "val/voc07_mAP" in trainer.callback_metrics
