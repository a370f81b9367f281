"""The COCO detection categories at their ids: the classes of torchvision's COCO checkpoints.

torchvision's COCO detectors have 91 class outputs: the background, then COCO category ids
1..90, of which 80 are used (the ids of the 2014 paper's 91 categories; 11 were never
annotated). detkit loads them as `num_classes=90`, label k = category id k, so
`COCO_CATEGORY_NAMES[k - 1]` names label k, and None marks the 10 unused ids (12, 26, 29, 30,
45, 66, 68, 69, 71, 83) that no class name matches.
"""

from __future__ import annotations

__all__ = ["COCO_CATEGORY_NAMES"]

COCO_CATEGORY_NAMES: tuple[str | None, ...] = (
    "person",  # 1
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",  # 10
    "fire hydrant",
    None,
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",  # 20
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    None,
    "backpack",
    "umbrella",
    None,
    None,  # 30
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",  # 40
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    None,
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",  # 50
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",  # 60
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    None,
    "dining table",
    None,
    None,
    "toilet",  # 70
    None,
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",  # 80
    "sink",
    "refrigerator",
    None,
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",  # 90
)
"""Name of COCO category id k at index k - 1 (k = 1..90); None for the ids without a category."""
