"""Synthetic shapes: the toolkit's embedded, deterministic detection / segmentation data set.

Each image has a two-colour linear-gradient background (random colours and direction), 1-4
filled shapes (circle, rectangle, isosceles triangle pointing up/down/left/right) of 16-64 px
in random colours that contrast with what lies beneath, and Gaussian noise. Intended boxes
overlap by IoU <= 0.3; later shapes occlude earlier ones, so instance masks are the visible
parts, objects less than half visible are not drawn, and boxes come from the visible masks.

Every image is drawn from its own random stream, seeded by ``(seed, split, index)``, so a
data set is identical for a seed whatever the number of worker processes.

Layout written by :func:`generate_shapes`::

    root/<split>/images/000000.png ...
    root/<split>/annotations.json      COCO format, RLE segmentations (compressed, str counts)

With ``keypoints=True`` every annotation also carries COCO keypoints: the 4 extreme points of the
visible mask (``SHAPES_KEYPOINTS``: top, right, bottom, left; all visible, v = 2), each on the
box's edge at the middle of the mask's pixels there, with a closed skeleton. The images and every
other field are the same as without keypoints (the points come from the masks, no random draw).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from detkit.utils.optional import require_opencv

from .coco import CocoDetection

cv2 = require_opencv("the shapes data set", ("fillPoly", "circle", "imwrite", "cvtColor"))

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None

__all__ = [
    "SHAPES_CLASSES",
    "SHAPES_KEYPOINTS",
    "SHAPES_SPLITS",
    "ShapesConfig",
    "ShapesDataset",
    "ensure_shapes",
    "generate_shapes",
    "render_shapes_image",
]

log = logging.getLogger(__name__)

SHAPES_CLASSES = ("circle", "rectangle", "triangle")
"""The synthetic shapes data set's class names, in label order (label 1 is "circle")."""
SHAPES_KEYPOINTS = ("top", "right", "bottom", "left")
SHAPES_SKELETON = ((1, 2), (2, 3), (3, 4), (4, 1))  # 1-based, as COCO
SHAPES_SPLITS = {"train": 2000, "val": 200}
# Bump when the drawing changes: cached data sets with another version are regenerated.
SHAPES_VERSION = 1
MARKER = "shapes_params.json"


@dataclass(frozen=True)
class ShapesConfig:
    """Knobs of the generator (defaults give the standard data set)."""

    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 4
    min_size: int = 16
    max_size: int = 64
    max_iou: float = 0.3
    min_visible: float = 0.5
    noise_sigma: float = 8.0
    min_contrast: float = 80.0  # Euclidean RGB distance to the local background / shapes beneath

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if not 4 <= self.min_size <= self.max_size <= self.image_size:
            raise ValueError("need 4 <= min_size <= max_size <= image_size")


def _box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    c0, c1 = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    coords = np.arange(size, dtype=np.float32)
    proj = coords[None, :] * math.cos(theta) + coords[:, None] * math.sin(theta)
    t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    return c0 * (1.0 - t[..., None]) + c1 * t[..., None]  # [S, S, 3] float32


def _sample_shape(rng: np.random.Generator, cfg: ShapesConfig) -> tuple[int, tuple, np.ndarray]:
    """One shape: class index, intended box (x0, y0, x1, y1, exclusive) and its raster mask."""
    s = cfg.image_size
    lo, hi = cfg.min_size, cfg.max_size
    cls = int(rng.integers(len(SHAPES_CLASSES)))
    mask = np.zeros((s, s), dtype=np.uint8)
    if cls == 0:  # circle: extent 2r + 1
        r = int(rng.integers(lo // 2, (hi - 1) // 2 + 1))
        cx, cy = (int(v) for v in rng.integers(r, s - r, size=2))
        cv2.circle(mask, (cx, cy), r, 1, thickness=-1, lineType=cv2.LINE_8)
        box = (cx - r, cy - r, cx + r + 1, cy + r + 1)
    else:
        if cls == 1:  # rectangle, any aspect within the size range
            w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        else:  # triangle: base and height within a factor 2 of each other
            base = int(rng.integers(lo, hi + 1))
            height = int(rng.integers(max(lo, (base + 1) // 2), min(hi, 2 * base) + 1))
            orientation = int(rng.integers(4))  # apex up, down, left, right
            w, h = (base, height) if orientation < 2 else (height, base)
        x0, y0 = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
        x1, y1 = x0 + w - 1, y0 + h - 1  # inclusive corners
        if cls == 1:
            pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        else:
            mx, my = (x0 + x1) // 2, (y0 + y1) // 2
            pts = {
                0: [(mx, y0), (x1, y1), (x0, y1)],
                1: [(x0, y0), (x1, y0), (mx, y1)],
                2: [(x0, my), (x1, y0), (x1, y1)],
                3: [(x0, y0), (x1, my), (x0, y1)],
            }[orientation]
        cv2.fillPoly(mask, [np.asarray(pts, dtype=np.int32)], 1, lineType=cv2.LINE_8)
        box = (x0, y0, x0 + w, y0 + h)
    return cls, box, mask


def _pick_colour(rng: np.random.Generator, references: list[np.ndarray], min_contrast: float) -> np.ndarray:
    """A random colour at least ``min_contrast`` away from every reference (best of 30 tries)."""
    best, best_dist = None, -1.0
    for _ in range(30):
        c = rng.integers(0, 256, size=3).astype(np.float32)
        dist = min(float(np.linalg.norm(c - r)) for r in references)
        if dist > best_dist:
            best, best_dist = c, dist
        if dist >= min_contrast:
            break
    return best


def _visible_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def extreme_points(mask: np.ndarray) -> list[float]:
    """COCO keypoints [x, y, v] * 4 of a mask's top, right, bottom and left extreme points.

    Each point lies on the edge of the mask's box (continuous pixel coordinates, as boxes), at the
    centre of the middle mask pixel of that edge's row / column.
    """
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]), int(xs[0]), int(xs[-1])

    def middle(line: np.ndarray) -> float:
        on = np.flatnonzero(line)
        return float(on[len(on) // 2]) + 0.5

    points = [
        (middle(mask[y0]), float(y0)),  # top
        (float(x1 + 1), middle(mask[:, x1])),  # right
        (middle(mask[y1]), float(y1 + 1)),  # bottom
        (float(x0), middle(mask[:, x0])),  # left
    ]
    return [v for x, y in points for v in (x, y, 2)]


def render_shapes_image(
    rng: np.random.Generator, cfg: ShapesConfig = ShapesConfig()
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one image.

    Returns:
        ``image`` ``np.ndarray[S, S, 3]`` uint8 RGB and one dict per visible object, bottom
        to top: ``label`` (0-based class index), ``mask`` ``[S, S]`` uint8 (visible part),
        ``box`` (x0, y0, x1, y1) exclusive, from the visible mask, ``visible_fraction``.
    """
    s = cfg.image_size
    bg = _background(rng, s)
    for _attempt in range(100):
        wanted = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        shapes: list[tuple[int, tuple, np.ndarray]] = []
        for _try in range(50 * wanted):
            if len(shapes) == wanted:
                break
            cls, box, mask = _sample_shape(rng, cfg)
            if all(_box_iou(box, other[1]) <= cfg.max_iou for other in shapes):
                shapes.append((cls, box, mask))

        # Top-down: a shape is kept when at least min_visible of it is left uncovered by the
        # kept shapes drawn after it. Dropped shapes are not drawn at all.
        covered = np.zeros((s, s), dtype=bool)
        kept: list[dict[str, Any]] = []
        for cls, box, mask in reversed(shapes):
            full = mask.astype(bool)
            visible = full & ~covered
            fraction = visible.sum() / max(full.sum(), 1)
            if fraction < cfg.min_visible:
                continue
            covered |= full
            kept.append(
                {
                    "label": cls,
                    "full": full,
                    "mask": visible.astype(np.uint8),
                    "box": _visible_box(visible),
                    "visible_fraction": float(fraction),
                }
            )
        kept.reverse()
        boxes = [k["box"] for k in kept]
        if len(kept) >= cfg.min_objects and all(
            _box_iou(boxes[i], boxes[j]) <= cfg.max_iou for i in range(len(boxes)) for j in range(i)
        ):
            break
    else:  # pragma: no cover - practically unreachable for sane configs
        raise RuntimeError("could not lay out a shapes image; relax the configuration")

    img = bg.copy()
    for obj in kept:
        # contrast with the background under the shape and with the shapes it overlaps
        refs = [bg[obj["full"]].mean(axis=0)]
        refs += [o["colour"] for o in kept if "colour" in o and (o["full"] & obj["full"]).any()]
        obj["colour"] = _pick_colour(rng, refs, cfg.min_contrast)
        img[obj["full"]] = obj["colour"]
    img += rng.normal(0.0, cfg.noise_sigma, size=img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    for obj in kept:
        del obj["full"], obj["colour"]
    return image, kept


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([SHAPES_VERSION, seed, zlib.crc32(split.encode("utf-8")), index])


def _make_one(job: tuple[str, str, int, int, ShapesConfig, bool]) -> list[dict[str, Any]]:
    images_dir, split, seed, index, cfg, keypoints = job
    image, objects = render_shapes_image(_image_rng(seed, split, index), cfg)
    path = os.path.join(images_dir, f"{index:06d}.png")
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    anns = []
    for obj in objects:
        rle = mask_utils.encode(np.asfortranarray(obj["mask"]))
        x0, y0, x1, y1 = obj["box"]
        anns.append(
            {
                "category_id": obj["label"] + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": int(obj["mask"].sum()),
                "iscrowd": 0,
                "segmentation": {
                    "size": [int(v) for v in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "visible_fraction": round(obj["visible_fraction"], 4),
            }
        )
        if keypoints:
            anns[-1].update(keypoints=extreme_points(obj["mask"]), num_keypoints=len(SHAPES_KEYPOINTS))
    return anns


def generate_shapes(
    root: str | os.PathLike,
    *,
    split: str,
    num_images: int,
    image_size: int = 128,
    seed: int,
    num_workers: int = 0,
    keypoints: bool = False,
    **config: Any,
) -> str:
    """Write ``root/<split>/images/*.png`` and ``root/<split>/annotations.json``.

    Args:
        root: output root (created if needed).
        split: split name; part of every image's seed.
        num_images: number of images.
        image_size: side of the square images (>= 64 recommended).
        seed: non-negative base seed.
        num_workers: processes to draw with (0 or 1: this process). Results do not depend on it.
        keypoints: also write each shape's 4 extreme points as COCO keypoints (module docstring).
        **config: other :class:`ShapesConfig` fields.

    Returns:
        Path of the annotation file.
    """
    if seed < 0 or num_images < 0:
        raise ValueError("seed and num_images must be non-negative")
    cfg = ShapesConfig(image_size=image_size, **config)
    split_dir = os.path.join(os.fspath(root), split)
    images_dir = os.path.join(split_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    jobs = [(images_dir, split, seed, i, cfg, keypoints) for i in range(num_images)]
    if num_workers > 1 and num_images > 1:
        with multiprocessing.get_context().Pool(num_workers) as pool:
            per_image = pool.map(_make_one, jobs, chunksize=max(1, num_images // (4 * num_workers)))
    else:
        per_image = [_make_one(job) for job in jobs]

    images, annotations = [], []
    for i, anns in enumerate(per_image):
        images.append(
            {
                "id": i + 1,
                "file_name": f"{i:06d}.png",
                "width": image_size,
                "height": image_size,
            }
        )
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **ann})
    coco = {
        "info": {
            "description": "detkit synthetic shapes",
            "version": SHAPES_VERSION,
            "split": split,
            "seed": seed,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(SHAPES_CLASSES)],
    }
    if keypoints:
        for cat in coco["categories"]:
            cat.update(keypoints=list(SHAPES_KEYPOINTS), skeleton=[list(p) for p in SHAPES_SKELETON])
    ann_file = os.path.join(split_dir, "annotations.json")
    with open(ann_file, "w", encoding="utf-8") as f:
        json.dump(coco, f, separators=(",", ":"))
    return ann_file


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Exclusive inter-process lock (e.g. DDP ranks generating the same cache)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cache_valid(split_dir: str, params: dict[str, Any]) -> bool:
    try:
        with open(os.path.join(split_dir, MARKER), encoding="utf-8") as f:
            if json.load(f) != params:
                return False
        n_png = sum(1 for name in os.listdir(os.path.join(split_dir, "images")) if name.endswith(".png"))
    except (OSError, ValueError):
        return False
    return n_png == params["num_images"] and os.path.isfile(os.path.join(split_dir, "annotations.json"))


def ensure_shapes(
    root: str | os.PathLike,
    splits: Mapping[str, int] | None = None,
    image_size: int = 128,
    seed: int = 0,
    *,
    num_workers: int = 0,
    keypoints: bool = False,
    **config: Any,
) -> dict[str, str]:
    """Generate the shapes splits under ``root`` unless a matching cache exists.

    A split is reused when ``root/<split>/shapes_params.json`` holds exactly the requested
    parameters; otherwise it is generated into a temporary folder under ``root`` and
    renamed into place (so an interrupted run never leaves a half-written cache).

    Args:
        root: cache root.
        splits: split name -> number of images (default ``{"train": 2000, "val": 200}``).
        image_size, seed, num_workers, keypoints, **config: see :func:`generate_shapes`.

    Returns:
        Split name -> annotation file path.
    """
    root = os.fspath(root)
    splits = dict(SHAPES_SPLITS if splits is None else splits)
    cfg = ShapesConfig(image_size=image_size, **config)
    os.makedirs(root, exist_ok=True)
    out = {}
    with _locked(os.path.join(root, ".shapes.lock")):
        for split, num_images in splits.items():
            params = {
                "version": SHAPES_VERSION,
                "split": split,
                "num_images": num_images,
                "seed": seed,
                **asdict(cfg),
            }
            if keypoints:  # only then: caches written before keypoints existed stay valid
                params["keypoints"] = True
            split_dir = os.path.join(root, split)
            if not _cache_valid(split_dir, params):
                log.info(
                    "generating %d shapes images for split %r under %s",
                    num_images,
                    split,
                    root,
                )
                tmp = tempfile.mkdtemp(prefix=f".tmp-{split}-", dir=root)
                try:
                    generate_shapes(
                        tmp,
                        split=split,
                        num_images=num_images,
                        seed=seed,
                        num_workers=num_workers,
                        keypoints=keypoints,
                        **asdict(cfg),
                    )
                    with open(os.path.join(tmp, split, MARKER), "w", encoding="utf-8") as f:
                        json.dump(params, f, indent=1)
                    if os.path.exists(split_dir):  # stale cache: move aside, then delete
                        old = tempfile.mkdtemp(prefix=f".old-{split}-", dir=root)
                        os.replace(split_dir, os.path.join(old, split))
                        shutil.rmtree(old, ignore_errors=True)
                    os.replace(os.path.join(tmp, split), split_dir)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            out[split] = os.path.join(split_dir, "annotations.json")
    return out


class ShapesDataset(CocoDetection):
    """The shapes data set as a :class:`CocoDetection` (generated on first use, then cached).

    Args:
        root: cache root (see :func:`ensure_shapes`).
        split: split name.
        num_images: images in the split (default: 2000 for ``train``, 200 for ``val``).
        image_size, seed, num_workers: generator parameters.
        keypoints: the data set with keypoints (the 4 extreme points of each shape).
        **kwargs: :class:`CocoDetection` keyword arguments (``transforms``, ``with_masks``, ...).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        num_images: int | None = None,
        image_size: int = 128,
        seed: int = 0,
        num_workers: int = 0,
        keypoints: bool = False,
        **kwargs: Any,
    ) -> None:
        if num_images is None:
            if split not in SHAPES_SPLITS:
                raise ValueError(f"num_images is required for split {split!r}")
            num_images = SHAPES_SPLITS[split]
        ann_file = ensure_shapes(
            root, {split: num_images}, image_size, seed, num_workers=num_workers, keypoints=keypoints
        )[split]
        super().__init__(os.path.join(os.fspath(root), split, "images"), ann_file, keypoints=keypoints, **kwargs)
