"""A COCO data set of new shapes images with some of the classes: data to fine-tune on.

    python scripts/make_shapes_subset.py --root data/shapes_2class --classes circle triangle
    python scripts/make_shapes_subset.py --root data/shapes_renamed --classes circle triangle \
        --rename circle=disk triangle=wedge --category-ids 7 3

Generates `--train` / `--val` shapes images with `--seed` (the `make train` data uses seed 0,
so the default seed 1 gives images the checkpoint has never seen), keeps the annotations of
`--classes` (objects of the other classes stay in the pictures as background) and writes
`ROOT/<split>/annotations_subset.json`. `--rename OLD=NEW` renames categories and
`--category-ids` gives the kept classes other ids (in `--classes` order), to try what a
detector does with data whose names or ids differ from its checkpoint's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from detkit.data import SHAPES_CLASSES, ensure_shapes

OUTPUT_NAME = "annotations_subset.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="output folder (ROOT/train, ROOT/val)")
    parser.add_argument("--classes", nargs="+", required=True, choices=SHAPES_CLASSES, help="classes to keep")
    parser.add_argument("--rename", nargs="*", default=[], metavar="OLD=NEW", help="rename kept categories")
    parser.add_argument("--category-ids", nargs="*", type=int, help="new ids of the kept classes, in --classes order")
    parser.add_argument("--train", type=int, default=500, help="training images (default 500)")
    parser.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (make train's data: 0)")
    args = parser.parse_args(argv)
    if len(set(args.classes)) != len(args.classes):
        parser.error(f"--classes: repeated class in {args.classes}")
    if args.category_ids is not None and len(args.category_ids) != len(args.classes):
        parser.error(f"--category-ids: {len(args.category_ids)} ids for {len(args.classes)} classes")
    if args.category_ids is not None and (
        len(set(args.category_ids)) != len(args.category_ids) or min(args.category_ids) < 1
    ):
        parser.error(f"--category-ids: need distinct positive ids, got {args.category_ids}")
    try:
        args.rename = dict(item.split("=", 1) for item in args.rename)
    except ValueError:
        parser.error(f"--rename: expected OLD=NEW, got {args.rename}")
    unknown = set(args.rename) - set(args.classes)
    if unknown:
        parser.error(f"--rename: {sorted(unknown)} not in --classes {args.classes}")
    return args


def subset(coco: dict, classes: list[str], rename: dict[str, str], category_ids: list[int] | None) -> dict:
    """`coco` with the categories `classes` only (renamed / renumbered as asked) and their annotations."""
    by_name = {c["name"]: c for c in coco["categories"]}
    new_ids = category_ids or [by_name[n]["id"] for n in classes]
    old_to_new = {by_name[n]["id"]: new for n, new in zip(classes, new_ids)}
    categories = [{**by_name[n], "id": new, "name": rename.get(n, n)} for n, new in zip(classes, new_ids)]
    annotations = [
        {**a, "category_id": old_to_new[a["category_id"]]}
        for a in coco["annotations"]
        if a["category_id"] in old_to_new
    ]
    return {**coco, "categories": sorted(categories, key=lambda c: c["id"]), "annotations": annotations}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = ensure_shapes(args.root, {"train": args.train, "val": args.val}, seed=args.seed)
    for split, path in files.items():
        with open(path) as f:
            coco = json.load(f)
        out = os.path.join(os.path.dirname(path), OUTPUT_NAME)
        with open(out, "w") as f:
            json.dump(subset(coco, args.classes, args.rename, args.category_ids), f)
        print(f"{split}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
