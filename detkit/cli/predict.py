"""`detkit predict`: detections of a trained detector, one command with three model sources.

    detkit predict --checkpoint CKPT --input DIR|FILE ... --output OUT [--annotations GT.json]
    detkit predict --onnx MODEL.onnx --input DIR|FILE ... --output OUT
    detkit predict --config CONFIG --ckpt_path CKPT [--key value ...]

The model source picks the mode: a training checkpoint (`--checkpoint`) or an exported ONNX
file (`--onnx`, run with ONNX Runtime) predicts image files; a config (`--config`, with
`--ckpt_path`) runs LightningCLI's `predict` on the config's data, with every LightningCLI
option (`detkit predict --config CONFIG --help` lists them).

A model without an RPN (R-CNN, Fast R-CNN: `requires_proposals`) gets selective-search
proposals for every image file: computed on the CPU before the forward passes, with the
settings its training proposals were made with (recorded in the checkpoint / ONNX metadata;
the library defaults, with a warning, where none are recorded), in `--proposal-workers`
processes; or read from a `detkit proposals` cache given with `--proposals CACHE`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main", "predict_files"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

EPILOG = """modes (the model source decides):
  detkit predict --checkpoint CKPT --input DIR|FILE [...] --output OUT [--annotations GT.json] [--strict]
      (or --onnx MODEL.onnx from `detkit export` instead of --checkpoint: ONNX Runtime, same outputs)
      image files -> OUT/detections.json (COCO results, the data set's category ids; evaluate it with
      `detkit evaluate --annotations GT.json --predictions OUT/detections.json`) and OUT/images.json
      R-CNN / Fast R-CNN: selective-search proposals are computed for each image with the settings of the
      model's training (or read with --proposals CACHE from `detkit proposals`)
  detkit predict --config CONFIG.yaml --ckpt_path CKPT [--key value ...]
      LightningCLI on the config's validation split -> <log dir>/predictions.json (COCO results);
      `detkit predict --config CONFIG.yaml --help` lists its options

examples (with the checkpoint of `detkit fit --config shapes_faster_rcnn_tiny`; then `detkit evaluate --help`):
  detkit predict --checkpoint runs/shapes_faster_rcnn_tiny/version_0/checkpoints/last.ckpt \\
      --input data/shapes/val/images --output predictions/
  detkit predict --checkpoint runs/shapes_faster_rcnn_tiny/version_0/checkpoints/last.ckpt \\
      --input data/shapes/val/images --annotations data/shapes/val/annotations.json --output predictions/
"""

# options of the image-file mode: refused with --config, where the config's data is predicted
FILE_OPTIONS = (
    "--input", "--output", "--annotations", "--score-threshold", "--draw-threshold", "--strict", "--device",
    "--batch-size", "--no-draw", "--proposals", "--proposal-workers", "--precision",
)  # fmt: skip


def build_parser(prog: str = "detkit predict") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} (--checkpoint CKPT | --onnx MODEL.onnx) --input DIR|FILE [...] --output OUT [options]\n"
        f"       {prog} --config CONFIG --ckpt_path CKPT [--key value ...]",
        description="Detect objects with a trained detector: image files (--checkpoint or --onnx) or a config's "
        "data (--config).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,  # `--config X --help` is LightningCLI's help
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help (with --config: LightningCLI's)")
    source = parser.add_argument_group("model (exactly one)").add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="Lightning checkpoint written by `detkit fit`: predict image files")
    source.add_argument(
        "--onnx", help="ONNX file written by `detkit export` (ONNX Runtime on the CPU): predict image files"
    )
    source.add_argument(
        "-c", "--config", action="append",
        help="config name or YAML: predict its validation data with LightningCLI (with --ckpt_path)",
    )  # fmt: skip
    files = parser.add_argument_group("image files (with --checkpoint or --onnx)")
    files.add_argument("--input", nargs="+", help="image files and/or folders (searched recursively)")
    files.add_argument("--output", help="output folder")
    files.add_argument(
        "--annotations",
        help="COCO json whose images entries give the image ids (file_name relative to the input folder)",
    )
    files.add_argument(
        "--score-threshold", type=float, default=0.0, help="keep detections scoring at least this (default: all)"
    )
    files.add_argument("--draw-threshold", type=float, default=0.5, help="draw detections scoring at least this")
    files.add_argument("--strict", action="store_true", help="fail on the first unreadable file instead of skipping it")
    files.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    files.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    files.add_argument("--no-draw", action="store_true", help="write the json files only")
    files.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32",
        help="with --checkpoint: bf16 runs the convolutions and matrix products under bfloat16 autocast (box "
        "arithmetic and NMS stay float32); faster on CPUs with AVX512-BF16 / AMX and on GPUs, slower on CPUs "
        "without native bfloat16. With --config: --model.inference_precision",
    )  # fmt: skip
    files.add_argument(
        "--proposals", metavar="CACHE",
        help="R-CNN / Fast R-CNN: read the proposals from this `detkit proposals` cache (it must hold every input "
        "image, matched by file name and size) instead of running selective search",
    )  # fmt: skip
    files.add_argument(
        "--proposal-workers", type=int, default=None, metavar="N",
        help="R-CNN / Fast R-CNN without --proposals: selective-search processes (default: all cores; 1: in this "
        "process). The settings (mode, resize_to, max_proposals, ...) are those the model was trained with",
    )  # fmt: skip
    config = parser.add_argument_group(
        "config's data (with --config)",
        "any LightningCLI option as well (--trainer.*, --data.*, --model.*); --config CONFIG --help lists them",
    )
    config.add_argument("--ckpt_path", help="checkpoint to predict with")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "detkit predict") -> int:
    """`detkit predict ...` (`argv` without the command name); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args, unknown = parser.parse_known_args(argv)
    if args.config:
        given = [flag for flag in FILE_OPTIONS if any(a == flag or a.startswith(flag + "=") for a in argv)]
        if given:
            parser.error(f"{', '.join(given)}: image-file options go with --checkpoint or --onnx; "
                         "--config predicts the config's data")  # fmt: skip
        from detkit.cli.lightning import run

        return run("predict", argv)  # LightningCLI parses everything, --help included
    if args.help:
        parser.print_help()
        return 0
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (LightningCLI options go with --config)")
    if not (args.checkpoint or args.onnx):
        parser.error("give the model: --checkpoint CKPT or --onnx MODEL.onnx (with --input), or --config CONFIG")
    if args.ckpt_path:
        parser.error("--ckpt_path goes with --config; image files take --checkpoint CKPT")
    if not args.input or not args.output:
        parser.error("--input and --output are required with --checkpoint / --onnx")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.proposal_workers is not None and args.proposal_workers < 1:
        parser.error("--proposal-workers must be >= 1")
    if args.onnx and args.precision != "fp32":
        parser.error("--precision goes with --checkpoint; an ONNX model runs in the precision it was exported in")
    return predict_files(args, prog)


def predict_files(args: argparse.Namespace, prog: str = "detkit predict") -> int:
    """Detections of image files with `args.checkpoint` or `args.onnx`.

    Writes `OUT/detections.json`, a COCO results list (`image_id`, `category_id` -- the data set's
    own ids --, `bbox` XYWH, `score`, and RLE `segmentation` for mask models) that
    `detkit evaluate` reads as it is; `OUT/images.json` (`images`: id, file_name, width, height
    of every predicted file; `categories`; `skipped`: unreadable files and why; `image_ids`: where
    the ids come from); and one PNG per image with its detections drawn (with OpenCV installed).
    Image ids come from `--annotations` (matched by `file_name` relative to the input folder;
    `image_ids: "annotations"` and the file's path), else they are 1..N in sorted file order
    (`image_ids: "sequential"`: `detkit evaluate` then maps them to the ground truth's by file name).

    Nothing is left behind when it fails (an unreadable file with `--strict`, no readable file at
    all): the files it wrote are removed, and the output folder if it made it.
    """
    from detkit.data import ImageReadError, read_image_rgb  # neither needs OpenCV nor pycocotools
    from detkit.evaluation.results import save_results_json

    device = _resolve_device(args.device)
    files = _list_images(args.input)
    if args.onnx:
        from detkit.export.runner import OnnxPredictor

        model = OnnxPredictor(args.onnx)
        print(f"model: {args.onnx} ({model.description})")
        class_names, proposal_settings, skeleton = model.class_names, model.proposal_settings, model.skeleton
        label_map = model.label_to_category_id
    else:
        from detkit.io.checkpoint import build_model_from_checkpoint

        model, info = build_model_from_checkpoint(args.checkpoint)
        if args.precision == "bf16" and device.type == "cpu" and not _cpu_has_native_bf16():
            print(
                f"{prog}: note: this CPU has no native bfloat16 arithmetic (AVX512-BF16 / AMX): "
                "--precision bf16 runs slower than fp32 here",
                file=sys.stderr,
            )
        class_names, proposal_settings, skeleton = info.class_names, info.proposal_settings, info.skeleton
        label_map = info.label_map.label_to_category_id if info.label_map is not None else None
    by_name: dict[str, int] = {}
    if args.annotations is not None:
        if not os.path.isfile(args.annotations):
            raise FileNotFoundError(f"annotations file not found: {args.annotations}")
        by_name, gt_map = _ground_truth_ids(args.annotations, class_names)
        if label_map is None:
            label_map = gt_map
        elif label_map != gt_map:
            raise ValueError(
                f"{args.annotations}: category ids {sorted(gt_map.values())} differ from the checkpoint's "
                f"{sorted(label_map.values())}"
            )
    identity = label_map is None  # a checkpoint from before category ids were stored
    if identity:
        label_map = {k: k for k in range(1, int(getattr(model, "num_classes", 0) or len(class_names or ())) + 1)}
    image_ids = list(range(1, len(files) + 1))  # without annotations: 1..N in sorted file order
    if args.annotations is not None:
        files, image_ids = _match_annotations(files, args.annotations, by_name, prog)
    if args.proposals and not getattr(model, "requires_proposals", False):
        raise ValueError(f"--proposals: {args.checkpoint or args.onnx} has an RPN and takes no external proposals")
    if getattr(getattr(model, "detector", model), "has_masks", False):  # an OnnxPredictor's detector knows
        from detkit.utils.optional import require

        require("pycocotools", "eval", "writing mask detections as COCO RLEs")
    model.to(device)
    out_names = _output_names([name for _, name in files])
    drawing = None if args.no_draw else _drawing(prog, skeleton)
    made_output = not os.path.exists(args.output)
    os.makedirs(args.output, exist_ok=True)

    results: list[dict] = []
    images_meta: list[dict] = []
    skipped: list[dict] = []
    readable = []
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(_removed_on_failure(args.output, images_meta, made_output))
        if args.onnx:
            cleanup.enter_context(_torch_single_threaded())
        proposals = itertools.repeat(None)
        if getattr(model, "requires_proposals", False):  # R-CNN / Fast R-CNN: selective search, outside forward
            proposals = _region_proposals(proposal_settings, files, image_ids, args, prog, cleanup)
        for (path, name), image_id, png, boxes in zip(files, image_ids, out_names, proposals):
            try:
                image = read_image_rgb(path)
            except ImageReadError as e:
                if args.strict:
                    raise
                skipped.append({"file_name": name, "reason": e.reason})
            else:
                if boxes is _NO_PROPOSALS:  # decoded here but not by OpenCV's selective search
                    if args.strict:
                        raise ValueError(f"{path}: selective search cannot read this image")
                    skipped.append({"file_name": name, "reason": "selective search cannot read it"})
                else:
                    readable.append((name, image_id, png, image, boxes))
            if len(readable) == args.batch_size:
                _predict_chunk(model, readable, device, args, results, images_meta, label_map, class_names, drawing)
                readable = []
        if readable:
            _predict_chunk(model, readable, device, args, results, images_meta, label_map, class_names, drawing)
        if not images_meta:
            first = skipped[0]
            raise ValueError(
                f"none of the {len(files)} input file(s) could be read (first: {first['file_name']}: "
                f"{first['reason']}); nothing written"
            )

    out_json = os.path.join(args.output, "detections.json")
    save_results_json(results, out_json)
    categories = [
        {"id": cid, "name": class_names[label - 1] if class_names and label <= len(class_names) else str(label)}
        for label, cid in sorted(label_map.items())
    ]
    meta = {
        "checkpoint": os.fspath(args.checkpoint or args.onnx),
        # where the ids come from: `detkit evaluate` maps "sequential" ones to the ground truth's by file name
        "image_ids": "sequential" if args.annotations is None else "annotations",
        **({} if args.annotations is None else {"annotations": os.fspath(args.annotations)}),
        "images": images_meta,
        "categories": categories,
        "skipped": skipped,
    }
    save_results_json(meta, os.path.join(args.output, "images.json"))
    print(f"{len(images_meta)} images, {len(results)} detections -> {out_json}")
    if identity:
        print(
            f"{prog}: warning: {args.checkpoint or args.onnx} stores no category ids; "
            f"category_id = label (1..{len(label_map)}); pass --annotations to use the data set's ids",
            file=sys.stderr,
        )
    if skipped:
        names = ", ".join(f"{s['file_name']} ({s['reason']})" for s in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        print(f"{prog}: skipped {len(skipped)} unreadable file(s): {names}{more} (see images.json)", file=sys.stderr)
    return 0


_NO_PROPOSALS = object()  # an image file selective search could not read


class _CacheBoxes:
    """Boxes (`float32[P, 4]`) of input file k, read from a proposal cache when the loop reaches it
    (not all held in memory); `_NO_PROPOSALS` where the cache has none (selective search failed)."""

    def __init__(self, cache, keys: list[int | None], cap: int | None = None):
        self.cache, self.keys, self.cap = cache, keys, cap

    def __iter__(self):
        for key in self.keys:
            yield _NO_PROPOSALS if key is None else self.cache.get(key)[: self.cap]


def _region_proposals(settings, files: list[tuple[Path, str]], image_ids: list[int], args, prog: str, cleanup):
    """Selective-search boxes of every input file (input pixels), in file order, as at training time.

    With `--proposals CACHE` they are read from that cache; otherwise computed on the CPU with the
    settings recorded with the model (`settings`, else the library defaults and a warning)
    by `compute_proposals` (its process pool and progress bar) into a temporary cache, which
    `cleanup` (an ExitStack) removes.
    """
    import tempfile

    from detkit.proposals.cache import (
        SELECTIVE_SEARCH_KEYS,
        ProposalCache,
        compute_proposals,
        selective_search_params,
    )

    source = args.checkpoint or args.onnx
    if settings:
        settings = {k: settings[k] for k in SELECTIVE_SEARCH_KEYS if k in settings}
    if args.proposals:
        return _cached_proposals(args.proposals, files, image_ids, settings, source, prog, cleanup)
    if not settings:
        defaults = selective_search_params()
        settings = {k: defaults[k] for k in SELECTIVE_SEARCH_KEYS}
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        print(f"{prog}: warning: {source} records no selective-search settings of its training; "
              f"computing proposals with the defaults ({shown})", file=sys.stderr)  # fmt: skip
    cache_path = os.path.join(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="detkit-predict-")), "ss.bin")
    try:
        cache = compute_proposals(
            list(enumerate(path for path, _ in files)), cache_path, workers=args.proposal_workers, **settings
        )
    except RuntimeError:  # files OpenCV cannot decode: reported as skipped (or --strict errors) later
        cache = ProposalCache(cache_path, readonly=True)
    cleanup.callback(cache.close)
    return _CacheBoxes(cache, [k if k in cache else None for k in range(len(files))])


def _cached_proposals(path: str, files, image_ids, settings: dict | None, source: str, prog: str, cleanup):
    """Boxes of every input file from a `detkit proposals` cache, matched by file name and size with the
    images the cache records; a one-line error names the first image it lacks."""
    from detkit.proposals.cache import SELECTIVE_SEARCH_KEYS, ProposalCache, cache_settings

    if not os.path.isfile(path):
        raise FileNotFoundError(f"proposal cache not found: {path}")
    made_with = cache_settings(path)
    if settings:
        differ = [
            f"{k}={made_with[k]} (model: {settings[k]})"
            for k in SELECTIVE_SEARCH_KEYS
            if k in settings and k != "max_proposals" and made_with[k] != settings[k]
        ]
        if differ:
            print(f"{prog}: warning: {path} was made with other selective-search settings than {source}'s "
                  f"training proposals: {', '.join(differ)}", file=sys.stderr)  # fmt: skip
    cache = ProposalCache(path, readonly=True)
    cleanup.callback(cache.close)
    by_file: dict[tuple[str, int | None], list[int]] = {}
    for cache_id, record in cache.images.items():
        by_file.setdefault(record, []).append(cache_id)
    keys, missing = [], []
    for (file, name), image_id in zip(files, image_ids):
        ids = by_file.get((file.name, os.stat(file).st_size), [])
        ids = [image_id] if image_id in ids else ids[:1]
        if not ids or ids[0] not in cache:
            missing.append(name)
        else:
            keys.append(ids[0])
    if missing:
        raise ValueError(
            f"proposal cache {path} has no proposals for input image {missing[0]} ({len(missing)} of {len(files)} "
            "input images missing, matched by file name and size): compute them with `detkit proposals`, or leave out "
            "--proposals to run selective search here"
        )
    return _CacheBoxes(cache, keys, (settings or {}).get("max_proposals"))


def _ground_truth_ids(path: str, class_names: Sequence[str] | None) -> tuple[dict[str, int], dict[int, int]]:
    """`{file_name: image_id}` and `{label: category_id}` (categories sorted by id) of a COCO json."""
    from detkit.data import load_coco_json

    data = load_coco_json(path)
    by_name = {}
    for img in data["images"]:
        if isinstance(img, dict) and isinstance(img.get("file_name"), str) and type(img.get("id")) is int:
            by_name[Path(img["file_name"]).as_posix()] = img["id"]
    cats = sorted(
        (c for c in data["categories"] if isinstance(c, dict) and type(c.get("id")) is int), key=lambda c: c["id"]
    )
    names = [c.get("name") for c in cats]
    if class_names and names != list(class_names):
        raise ValueError(f"{path}: categories {names} differ from the checkpoint's classes {list(class_names)}")
    return by_name, {i + 1: c["id"] for i, c in enumerate(cats)}


def _match_annotations(
    files: list[tuple[Path, str]], annotations: str, by_name: dict[str, int], prog: str
) -> tuple[list[tuple[Path, str]], list[int]]:
    """The input files listed in the annotations (by file_name relative to the input folder) and their
    image ids; other files are left out and said, images of the annotations not found are said."""
    kept = [(p, n) for p, n in files if n in by_name]
    if not kept:
        raise ValueError(
            f"none of the {len(files)} input files is an images entry of {annotations}: file_name must be relative "
            f"to the --input folder (first input file: {files[0][1]!r}; first file_name: {next(iter(by_name), None)!r})"
        )
    if len(kept) < len(files):
        print(f"{prog}: {len(files) - len(kept)} input file(s) are not in {annotations}; left out", file=sys.stderr)
    absent = len(by_name) - len({n for _, n in kept})
    if absent:
        print(f"{prog}: warning: {absent} image(s) of {annotations} are not under the input; they get no detections",
              file=sys.stderr)  # fmt: skip
    return kept, [by_name[n] for _, n in kept]


def _list_images(inputs: Sequence[str]) -> list[tuple[Path, str]]:
    """(path, name relative to its input) of every image file under the inputs, sorted."""
    found = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            found += [(f, f.relative_to(p).as_posix()) for f in files]
        elif p.is_file():
            found.append((p, p.name))
        else:
            raise FileNotFoundError(f"input not found: {item}")
    if not found:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {', '.join(inputs)}")
    return found


def _output_names(names: Sequence[str]) -> list[str]:
    out, used = [], set()
    for name in names:
        stem = Path(name).with_suffix("").as_posix().replace("/", "__")
        candidate, k = stem, 1
        while candidate in used:
            candidate, k = f"{stem}_{k}", k + 1
        used.add(candidate)
        out.append(candidate + ".png")
    return out


@contextlib.contextmanager
def _torch_single_threaded():
    """Within: torch on one thread (restored after). With --onnx torch only converts images, and its
    thread pool would compete for the cores with ONNX Runtime's."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (else it emulates them)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def _drawing(prog: str, skeleton: Sequence[tuple[int, int]] | None):
    """`(draw_detections with the keypoints' skeleton bound, save_png)`, or None with a line on stderr where
    drawing's dependencies are missing."""
    try:
        from detkit.visualize import draw_detections, save_png
    except ImportError as e:
        from detkit.utils.optional import extra_for, missing_message

        name = getattr(e, "name", None) or ""
        if extra_for(name) is None:
            raise
        print(f"{prog}: no drawings: {missing_message(name, extra_for(name, 'predict'), 'drawing detections')} "
              "(--no-draw: the json files only)", file=sys.stderr)  # fmt: skip
        return None
    return functools.partial(draw_detections, skeleton=skeleton), save_png


@contextlib.contextmanager
def _removed_on_failure(output: str, images_meta: list[dict], made_output: bool):
    """On an exception inside: remove the drawings written so far (listed in `images_meta`), and the
    output folder if this run made it and it is empty; then re-raise."""
    try:
        yield
    except BaseException:
        for entry in images_meta:
            if "drawing" in entry:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(output, entry["drawing"]))
        if made_output:
            with contextlib.suppress(OSError):
                os.rmdir(output)
        raise


def _predict_chunk(model, chunk, device, args, results, images_meta, label_map, class_names, drawing) -> None:
    """Predict one batch of read images; append its COCO results and image entries (and draw them)."""
    import torch

    from detkit.evaluation.results import detections_to_coco_results

    arrays = [item[3] for item in chunk]
    images = [torch.from_numpy(a).permute(2, 0, 1).to(device=device, dtype=torch.float32).div_(255) for a in arrays]
    extra = {}
    if getattr(model, "requires_proposals", False):
        extra["proposals"] = [torch.from_numpy(boxes).to(device) for *_, boxes in chunk]
    precision = {} if args.onnx else {"precision": args.precision}  # an ONNX model has its own
    try:
        with torch.inference_mode():
            detections = model.predict(images, **extra, **precision)
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise MemoryError(
            f"out of memory on {device} predicting {len(images)} image(s): use a smaller --batch-size "
            f"(now {args.batch_size}), smaller images, or --device cpu"
        ) from None
    for (name, image_id, png, array, _), det in zip(chunk, detections):
        det = {k: v.cpu() for k, v in det.items()}
        keep = det["scores"] >= args.score_threshold
        det = {k: v[keep] for k, v in det.items()}
        results.extend(detections_to_coco_results([image_id], [det], label_to_category_id=label_map))
        entry = {"id": image_id, "file_name": name, "width": int(array.shape[1]), "height": int(array.shape[0])}
        if drawing is not None:
            draw_detections, save_png = drawing
            shown = det["scores"] >= args.draw_threshold
            drawn = draw_detections(
                array,
                det["boxes"][shown],
                det["labels"][shown],
                det["scores"][shown],
                det["masks"][shown] if "masks" in det else None,
                class_names=class_names,
                keypoints=det["keypoints"][shown] if "keypoints" in det else None,
            )
            save_png(os.path.join(args.output, png), drawn)
            entry["drawing"] = png
        images_meta.append(entry)
