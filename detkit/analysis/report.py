"""`REPORT/index.html` + `REPORT/analysis.json`: the analysis as one self-contained folder.

Charts are PNGs drawn by matplotlib (Agg), pictures of images are drawn with OpenCV; the
page is plain HTML + CSS with a little JavaScript (sortable tables, a check that every
picture loaded). Nothing is fetched from the internet: open index.html from disk.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detkit.analysis.coco_errors import AREA_NAMES, CURVE_NAMES, ERROR_TYPES, RECALL_THRESHOLDS

__all__ = ["draw_image", "write_report"]

CURVE_COLOURS = ("#ffffff", "#c6dbef", "#4f81bd", "#9bbb59", "#f79646", "#c0504d", "#e4dfec", "#8064a2")
CURVE_HELP = {
    "C75": "PR at IoU 0.75 (COCO's AP75)",
    "C50": "PR at IoU 0.50 (COCO's AP50)",
    "Loc": "PR at IoU 0.10: localisation errors forgiven (duplicates still count)",
    "Sim": "Loc, and detections on objects of a class of the same supercategory forgiven",
    "Oth": "Loc, and detections on objects of any other class forgiven",
    "BG": "every false positive (background ones too) removed",
    "FN": "every object found: precision 1 at every recall",
}
ERROR_HELP = {
    "classification": "IoU >= 0.5 with an object of another class (fix: the detection takes that class)",
    "localisation": "0.1 <= IoU < 0.5 with an object of its class (fix: it takes the object's box, or mask)",
    "both": "0.1 <= IoU < 0.5 with an object of another class only (fix: removed)",
    "duplicate": "IoU >= 0.5 with an object of its class that a higher-scoring detection took (fix: removed)",
    "background": "IoU < 0.1 with every object (fix: removed)",
    "missed": "an object no detection found nor any error above points at (fix: removed from the ground truth)",
}
GT_COLOUR = (40, 200, 40)  # RGB, solid boxes
PICTURE_SIDE = 360  # drawn images' longer side in pixels: three to a row on a 1280-pixel-wide page


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# Charts have fixed margins (in inches, sized from the widest label where labels vary) instead of
# tight_layout / bbox_inches="tight": each of those lays out every text once more, and text layout is
# most of a chart's time.
def _text_width(labels: Sequence[str], size: float) -> float:
    """Width in inches of the widest of `labels` at font `size` (points)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(size=size)
    widths = [text_to_path.get_text_width_height_descent(str(s), prop, ismath=False)[0] for s in labels]
    return max(widths, default=0.0) / 72


def _grid(rows: int, cols: int, panel: tuple[float, float], margins: tuple[float, float, float, float],
          gaps: tuple[float, float] = (0.0, 0.0), **kwargs):  # fmt: skip
    """A figure of `rows` x `cols` axes of `panel` (width, height) inches with `margins` (left,
    right, bottom, top) and `gaps` (between columns, between rows) in inches."""
    (w, h), (left, right, bottom, top), (wgap, hgap) = panel, margins, gaps
    width, height = left + cols * w + (cols - 1) * wgap + right, bottom + rows * h + (rows - 1) * hgap + top
    spec = {"left": left / width, "right": 1 - right / width, "bottom": bottom / height, "top": 1 - top / height,
            "wspace": wgap / w, "hspace": hgap / h}  # fmt: skip
    return _pyplot().subplots(rows, cols, figsize=(width, height), squeeze=False, gridspec_kw=spec, **kwargs)


def _save(fig, path: str) -> None:
    fig.savefig(path, dpi=96, pil_kwargs={"compress_level": 3})
    _pyplot().close(fig)


# ---------------------------------------------------------------------------- charts
UNIT_TICKS = (0, 0.2, 0.4, 0.6, 0.8, 1)


def _error_curves_axes(ax, curves: Mapping[str, np.ndarray], aps: Mapping[str, float], title: str) -> None:
    """The curves stacked as filled bands, all bands one collection and all edges one line (one
    artist per curve would cost more to draw than the data)."""
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    x, previous, bands, edges = RECALL_THRESHOLDS, np.zeros(len(RECALL_THRESHOLDS)), [], []
    for name in CURVE_NAMES:
        y = curves[name]
        bands.append(np.column_stack([np.r_[x, x[::-1]], np.r_[y, previous[::-1]]]))
        edges.append(np.column_stack([np.r_[x, np.nan], np.r_[y, np.nan]]))
        previous = np.maximum(previous, y)
    colours = CURVE_COLOURS[1 : 1 + len(CURVE_NAMES)]
    ax.add_collection(PolyCollection(bands, facecolors=colours, linewidths=0))
    ax.plot(*np.concatenate(edges).T, color="#333333", linewidth=0.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xticks(UNIT_TICKS, [f"{v:g}" for v in UNIT_TICKS])
    ax.set_yticks(UNIT_TICKS, [f"{v:g}" for v in UNIT_TICKS])
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=10, y=1.0, pad=4)  # a fixed position: no search for overlapping ticks
    keys = [Patch(color=c, label=f"[{aps[n]:.3f}] {n}") for c, n in zip(colours, CURVE_NAMES)]
    ax.legend(handles=keys[::-1], loc="lower left", fontsize=8.5, framealpha=0.85)


def _chart_error_curves(analysis, path: str) -> None:
    areas = [area for area in AREA_NAMES if analysis.ap[area]["C50"] >= 0]  # sizes without objects: no panel
    fig, axes = _grid(1, max(1, len(areas)), (2.75, 2.75), (0.6, 0.15, 0.5, 0.3), (0.25, 0), sharey=True)
    for ax, area in zip(axes[0], areas):
        curves = {name: analysis.curve(name, area) for name in CURVE_NAMES}
        _error_curves_axes(ax, curves, analysis.ap[area], f"all classes, {area} objects")
        ax.label_outer()
    _save(fig, path)


def _chart_class_curves(analysis, names: Sequence[str], path: str) -> None:
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = _grid(rows, cols, (2.75, 2.75), (0.6, 0.15, 0.5, 0.3), (0.25, 0.35), sharex=True, sharey=True)
    for ax, name in zip(axes.ravel(), names):
        aps = analysis.class_ap[name]["all"]
        _error_curves_axes(ax, {n: analysis.curve(n, "all", name) for n in CURVE_NAMES}, aps, name)
        ax.label_outer()  # tick labels and axis labels on the outer panels only
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    if len(names) % cols:  # the last row is not full: the panels above the gap keep their x tick labels
        for ax in axes[-2, len(names) % cols :]:
            ax.tick_params(labelbottom=True)
            ax.set_xlabel("recall")
    _save(fig, path)


def _chart_tide(tide: Mapping[str, float], counts: Mapping[str, int], path: str) -> None:
    labels = [f"{n} ({counts[n]})" for n in ERROR_TYPES]
    fig, axes = _grid(1, 1, (5.0, 2.5), (0.25 + _text_width(labels, 10), 0.2, 0.55, 0.15))
    ax = axes[0, 0]
    gains = [100 * tide[name] for name in ERROR_TYPES]
    bars = ax.barh(labels[::-1], gains[::-1], color="#c0504d")
    ax.bar_label(bars, labels=[f"{g:.1f}" for g in gains[::-1]], padding=3, fontsize=8)
    ax.set_xlabel(f"AP50 gained if fixed (points; AP50 = {100 * tide['AP50']:.1f})")
    ax.set_xlim(0, max(1.0, max(gains) * 1.2))
    _save(fig, path)


def _chart_confusion(matrix: np.ndarray, labels: Sequence[str], score: float, iou: float, path: str) -> None:
    k = len(labels)
    side = min(12.5, 1.0 + 0.45 * k)
    label_w = _text_width(labels, 8)
    # x labels turn 60 degrees, right end under their column: they reach down sin(60) and left cos(60) of their width
    left = max(label_w + 0.45, 0.5 * label_w - side / (2 * k)) + 0.1
    fig, axes = _grid(1, 1, (side, side), (left, 1.3, 0.87 * label_w + 0.55, 0.35))
    ax = axes[0, 0]
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    bar = fig.add_axes((1 - 1.05 / fig.get_figwidth(), ax.get_position().y0, 0.2 / fig.get_figwidth(),
                        ax.get_position().height))  # fmt: skip
    fig.colorbar(im, cax=bar, label="share of the row")
    ax.set_xticks(range(k), labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(f"score >= {score:g}, IoU >= {iou:g}", fontsize=10, y=1.0, pad=6)
    if k <= 25:
        for (r, c), v in np.ndenumerate(matrix):
            if v:
                ax.text(c, r, str(v), ha="center", va="center", fontsize=7,
                        color="white" if share[r, c] > 0.6 else "black")  # fmt: skip
    _save(fig, path)


def _chart_bars(labels: Sequence[str], values: Sequence[float], xlabel: str, path: str, colour="#4f81bd") -> None:
    height = 0.22 * max(3, len(labels))
    fig, axes = _grid(1, 1, (5.5, height), (0.2 + _text_width(labels, 8), 0.2, 0.5, 0.1))
    ax = axes[0, 0]
    bars = ax.barh(list(labels)[::-1], list(values)[::-1], color=colour)
    ax.bar_label(bars, padding=3, fontsize=8)
    ax.set_xlim(0, max(1, max(values, default=0)) * 1.15)  # room for the numbers right of the bars
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_xlabel(xlabel)
    ax.tick_params(axis="y", labelsize=8)
    _save(fig, path)


COUNT_MARGIN = 0.85  # inches left of a chart whose y axis counts objects (up to six digits, then 1e6 notation)


def _chart_histogram(edges: Sequence[str], counts: Sequence[int], xlabel: str, path: str) -> None:
    bottom = 0.45 + 0.71 * _text_width(edges, 8)  # x labels turn 45 degrees
    fig, axes = _grid(1, 1, (5.5, 2.6), (COUNT_MARGIN, 0.15, bottom, 0.15))
    ax = axes[0, 0]
    ax.bar(range(len(counts)), counts, color="#9bbb59", width=0.9)
    ax.set_xticks(range(len(counts)), edges, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("objects")
    _save(fig, path)


def _chart_anchor_histogram(centres, reached, unreached, marks, xlabel: str, log_x: bool, path: str) -> None:
    """Objects per bin (reached / not reached by an anchor, stacked) with the anchors' values as lines."""
    plt = _pyplot()
    bottom = 0.55 if log_x else 0.45 + 0.71 * _text_width(centres[0], 8)
    fig, axes = _grid(1, 1, (5.5, 2.6), (COUNT_MARGIN, 0.15, bottom, 0.15))
    ax = axes[0, 0]
    widths = np.diff(centres[1]) if log_x else None
    left = centres[1][:-1] if log_x else np.arange(len(reached))
    kwargs = {"width": widths, "align": "edge"} if log_x else {"width": 0.9}
    ax.bar(left, reached, color="#9bbb59", label="reached", **kwargs)
    ax.bar(left, unreached, bottom=reached, color="#c0504d", label="no anchor reaches it", **kwargs)
    if log_x:
        ax.set_xscale("log", base=2)
        used = np.flatnonzero(np.asarray(reached) + np.asarray(unreached))
        lo = min([centres[1][used[0]]] + [m / 1.5 for m in marks]) if len(used) else min(marks) / 2
        hi = max([centres[1][used[-1] + 1]] + [m * 1.5 for m in marks]) if len(used) else max(marks) * 2
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.set_xticks(range(len(reached)), centres[0], rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    for i, m in enumerate(marks):
        ax.axvline(m, color="#24324a", linestyle="--", linewidth=1.2, label="anchors" if i == 0 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("objects")
    ax.legend(fontsize=8, framealpha=0.85)
    _save(fig, path)


def _anchor_section(anchors: Mapping[str, Any], output: str) -> str:
    """The data set section's part on the model: input size, anchors, objects no anchor reaches."""
    size = anchors.get("input_size")
    body = "<h3>The model's input and anchors</h3>"
    if size:
        met = ", ".join(f"{w}&times;{h} ({n} images)" for h, w, n in size.get("resized_sizes", [])[:4])
        body += (f"<p>Images are resized so the shorter side is {size['min_size']} pixels and the longer at most "
                 f"{size['max_size']}, padded to a multiple of {size['size_divisible']}"
                 + (f"; resized sizes (width&times;height): {met}" if met else "") + ".</p>")  # fmt: skip
    if not anchors["applies"]:
        return body + f'<div class="note">{_esc(anchors["reason"])}</div>'
    levels = ", ".join(
        f"{'/'.join(f'{v:g}' for v in s)} px" for s in anchors["anchor_sizes"]
    )  # one group per pyramid level
    ratios = sorted({r for level in anchors["aspect_ratios"] for r in level})
    share = anchors["unreached_share"]
    cls = "note" if share > 0.1 else "key"
    body += (f'<p>Anchor sizes per level: {_esc(levels)}; aspect ratios (height / width): '
             f'{", ".join(f"{r:g}" for r in ratios)}. The RPN counts an anchor positive at IoU &ge; '
             f'{anchors["fg_iou_threshold"]:g} with an object (and each object\'s best anchor, whatever its IoU).</p>'
             f'<div class="{cls}"><b>{100 * share:.1f}%</b> of the objects ({anchors["unreached"]} of '
             f'{anchors["objects"]}) have no anchor at IoU &ge; {anchors["fg_iou_threshold"]:g} in the model\'s '
             "input; the RPN learns them only from their single best anchor. Median best IoU "
             f'{anchors["best_iou_median"] or 0:.2f}.</div>')  # fmt: skip
    rows = [[name, n, total, float(n / total) if total else -1.0]
            for name, (n, total) in anchors["unreached_per_class"].items()]  # fmt: skip
    body += _table(["class", "not reached", "objects", "share"], rows)
    marks = sorted({v for level in anchors["anchor_sizes"] for v in level})
    edges = np.asarray(anchors["size_bins"])
    hist = anchors["size_histogram"]
    _chart_anchor_histogram((None, edges), hist["reached"], hist["unreached"], marks,
                            "box size in the model's input: sqrt(width x height), pixels", True,
                            os.path.join(output, "charts", "anchor_sizes.png"))  # fmt: skip
    ratio_edges = anchors["ratio_bins"]
    hist = anchors["ratio_histogram"]
    positions = [float(np.interp(np.log2(r), ratio_edges, np.arange(len(ratio_edges)) - 0.5)) for r in ratios]
    _chart_anchor_histogram(([f"{2**b:.2g}" for b in ratio_edges[1:]], None), hist["reached"], hist["unreached"],
                            positions, "aspect ratio height / width (upper bin edge)", False,
                            os.path.join(output, "charts", "anchor_ratios.png"))  # fmt: skip
    body += '<div class="grid">' + _figure("charts/anchor_sizes.png", "Box sizes after resizing, anchor sizes dashed")
    body += _figure("charts/anchor_ratios.png", "Aspect ratios, anchor ratios dashed") + "</div>"
    return body


# ---------------------------------------------------------------------------- images
def _dashed_rectangle(image: np.ndarray, x0: int, y0: int, x1: int, y1: int, colour, thickness: int = 2) -> None:
    import cv2

    dash = 6
    for a, b, fixed, horizontal in ((x0, x1, y0, True), (x0, x1, y1, True), (y0, y1, x0, False), (y0, y1, x1, False)):
        for s in range(a, b, 2 * dash):
            e = min(s + dash, b)
            p, q = ((s, fixed), (e, fixed)) if horizontal else ((fixed, s), (fixed, e))
            cv2.line(image, p, q, colour, thickness)


def _label(image: np.ndarray, text: str, x: int, y: int, colour) -> None:
    import cv2

    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    y = max(y, h + base)
    cv2.rectangle(image, (x, y - h - base), (x + w + 2, y), colour, -1)
    cv2.putText(image, text, (x + 1, y - base + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)


# detection colours, one per class (cycled); no green, which marks the ground truth
DET_COLOURS = ((255, 127, 14), (31, 119, 255), (230, 50, 170), (0, 205, 225), (255, 215, 0), (220, 20, 60),
               (160, 110, 220), (170, 110, 80))  # fmt: skip


def _det_colour(k: int) -> tuple[int, int, int]:
    return DET_COLOURS[k % len(DET_COLOURS)]


def draw_image(
    path: str,
    objects: Sequence[tuple[str, Sequence[float]]],
    detections: Sequence[tuple[str, int, float, Sequence[float]]],
    out_path: str,
    max_side: int = PICTURE_SIDE,
) -> None:
    """Draw ground truth (solid green, class name) and detections (dashed, one colour per class,
    "class score") on the image at `path`, scaled to at most `max_side` pixels, into `out_path`."""
    import cv2

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    scale = min(4.0, max_side / max(image.shape[:2]))  # small images drawn larger, up to 4x
    if scale != 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    image = np.ascontiguousarray(image)
    for name, (x, y, w, h) in objects:
        p0, p1 = (round(x * scale), round(y * scale)), (round((x + w) * scale), round((y + h) * scale))
        cv2.rectangle(image, p0, p1, GT_COLOUR, 2)
        _label(image, name, p0[0], p1[1] + 12, GT_COLOUR)
    for name, k, score, (x, y, w, h) in detections:
        x0, y0, x1, y1 = round(x * scale), round(y * scale), round((x + w) * scale), round((y + h) * scale)
        _dashed_rectangle(image, x0, y0, x1, y1, _det_colour(k))
        _label(image, f"{name} {score:.2f}", x0, y0, _det_colour(k))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError(f"cannot encode {out_path}")
    with open(out_path, "wb") as f:
        f.write(buf.tobytes())


# ---------------------------------------------------------------------------- page
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#24324a;color:#fff;padding:14px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c9d3e3;font-size:13px}
nav{padding:6px 28px;background:#e8ecf2;font-size:13px}nav a{margin-right:16px;color:#24324a}
main{padding:8px 28px 40px;max-width:1500px}
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:6px 18px 16px;margin:16px 0}
h2{font-size:18px;margin:12px 0 8px;color:#24324a}h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{padding:3px 10px;border-bottom:1px solid #e5e8ee;text-align:right}
th{background:#eef1f6;position:sticky;top:0}th.sortable{cursor:pointer;user-select:none}
th.sortable:after{content:" \\2195";color:#8a94a6}td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.grid figure{margin:0;background:#fafbfc;border:1px solid #e5e8ee;border-radius:4px;padding:6px}
figcaption{font-size:12px;color:#555;max-width:520px}
.pictures figcaption{max-width:360px}
img.chart{max-width:100%;height:auto}
dl{font-size:13px;margin:6px 0}dt{font-weight:600;float:left;width:120px;clear:left}dd{margin:0 0 4px 130px}
.note{background:#fff6e0;border:1px solid #f0d48a;border-radius:4px;padding:6px 10px;margin:8px 0;font-size:13px}
.key{font-size:12px;color:#555}.solid{border:2px solid rgb(40,200,40);padding:0 4px}
.dashed{border:2px dashed #e0609a;padding:0 4px}
"""

SCRIPT = """
window.onerror=function(m){document.title='JS-ERROR: '+m;};
function sortTable(th){var t=th.closest('table'),i=Array.prototype.indexOf.call(th.parentNode.children,th);
var rows=Array.prototype.slice.call(t.tBodies[0].rows),asc=th.dataset.dir!=='asc';th.dataset.dir=asc?'asc':'desc';
rows.sort(function(a,b){var x=a.cells[i].dataset.v||a.cells[i].textContent,
    y=b.cells[i].dataset.v||b.cells[i].textContent;
var nx=parseFloat(x),ny=parseFloat(y);var c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;return asc?c:-c;});
rows.forEach(function(r){t.tBodies[0].appendChild(r);});}
window.addEventListener('load',function(){var imgs=document.images,bad=[];
for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0)bad.push(imgs[i].getAttribute('src'));}
var el=document.getElementById('image-check');el.dataset.images=imgs.length;el.dataset.broken=bad.join(' ');
el.textContent=imgs.length+' pictures, '+bad.length+' not loaded';});
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: float) -> str:
    return "—" if v is None or v < 0 else f"{v:.3f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], sortable: bool = True) -> str:
    cls = ' class="sortable" onclick="sortTable(this)"' if sortable else ""
    head = "".join(f"<th{cls}>{_esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(f'<td data-v="{v:.6f}">{_fmt(v)}</td>')
            else:
                cells.append(f"<td>{_esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(src: str, caption: str = "", width: int | None = None) -> str:
    w = f' style="max-width:{width}px"' if width else ""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img class="chart" src="{_esc(src)}" alt="{_esc(caption or src)}"{w}>{cap}</figure>'


def _json_text(value: Any, depth: int = 0) -> str:
    """`value` as JSON: one key of a dict per line, indented by depth; lists and numbers on one line.
    (json.dump with an indent puts every number of a curve on a line of its own, in pure Python.)"""
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        pad = "\n" + " " * (depth + 1)
        items = [f"{json.dumps(k)}: {_json_text(v, depth + 1)}" for k, v in value.items()]
        return "{" + pad + ("," + pad).join(items) + "\n" + " " * depth + "}"
    return json.dumps(value, separators=(", ", ": "))


def _summary_body(err: Mapping[str, Any]) -> str:
    """The 12 COCO numbers and the sortable per-class table of one analysis (`report["errors"]` / `["segm"]`)."""
    stats = err["stats"]
    body = _table(["metric", *stats], [["value", *[float(v) for v in stats.values()]]], sortable=False)
    rows = [[name, *(float(c[k]) for k in ("AP", "AP50", "AP75", "AR100")), c["objects"], c["images"],
             c["detections"]] for name, c in err["per_class"].items()]  # fmt: skip
    body += "<h3>Per class (click a column to sort)</h3>"
    return body + _table(["class", "AP", "AP50", "AP75", "AR100", "objects", "images", "detections"], rows)


def _errors_body(analysis, err: Mapping[str, Any], output: str, prefix: str = "") -> str:
    """The error curves, TIDE chart and per-class curves of one analysis; charts `charts/{prefix}*.png`."""
    curves, tide, per_class = (f"charts/{prefix}{name}.png" for name in ("error_curves", "tide", "class_curves"))
    _chart_error_curves(analysis, os.path.join(output, curves))
    _chart_tide(err["tide"], err["error_counts"], os.path.join(output, tide))
    helps = "".join(f"<dt>{n}</dt><dd>{_esc(h)}</dd>" for n, h in CURVE_HELP.items())
    body = _figure(curves, "The COCO site's error analysis: the area under each curve (in brackets) is the AP "
                   "with that error and those above it forgiven; sizes without objects are left out.")  # fmt: skip
    body += f"<dl>{helps}</dl>"
    tide_help = "".join(f"<dt>{n}</dt><dd>{_esc(h)}</dd>" for n, h in ERROR_HELP.items())
    body += '<h3>AP lost per error type (TIDE)</h3><div class="grid">'
    body += _figure(tide, "AP at IoU 0.5 gained by fixing one error type alone (count in brackets).")
    body += f"<dl>{tide_help}</dl></div>"
    table_rows = [[cls, *(float(analysis.class_ap[cls]["all"][n]) for n in CURVE_NAMES)]
                  for cls in analysis.category_names if "all" in analysis.class_ap[cls]]  # fmt: skip
    body += "<h3>Per class: area under each curve, all sizes</h3>" + _table(["class", *CURVE_NAMES], table_rows)
    shown = [r[0] for r in sorted(table_rows, key=lambda r: r[2])][:12]  # lowest AP50 first
    if shown:
        _chart_class_curves(analysis, shown, os.path.join(output, per_class))
        more = f" (the {len(shown)} with the lowest AP50)" if len(shown) < len(table_rows) else ""
        body += "<h3>Per class curves" + more + "</h3>" + _figure(per_class)
    return body


def write_report(
    output: str, report: Mapping[str, Any], analysis=None, pictures: Sequence[Mapping] = (), segm_analysis=None
) -> str:
    """Write `output/index.html`, its charts and `output/analysis.json` (= `report`); returns the page's path.

    `analysis` (a `CocoErrorAnalysis` of boxes) draws the curves, `segm_analysis` (of masks, with
    `report["segm"]`) a mask section; `pictures` are the drawn images (`file`, `caption`) already
    under `output/images/`.
    """
    os.makedirs(os.path.join(output, "charts"), exist_ok=True)
    with open(os.path.join(output, "analysis.json"), "w", encoding="utf-8") as f:
        f.write(_json_text(report))
    sections, nav = [], []

    def section(anchor: str, title: str, body: str) -> None:
        nav.append(f'<a href="#{anchor}">{_esc(title)}</a>')
        sections.append(f'<section id="{anchor}"><h2>{_esc(title)}</h2>{body}</section>')

    notes = "".join(f'<div class="note">{_esc(n)}</div>' for n in report.get("notes", []))
    if "errors" in report and analysis is not None:
        err = report["errors"]
        section("summary", "Summary", notes + _summary_body(err))
        section("errors", "Error analysis", _errors_body(analysis, err, output))

        cm = err["confusion"]
        _chart_confusion(np.asarray(cm["matrix"]), cm["labels"], cm["score_threshold"], cm["iou_threshold"],
                         os.path.join(output, "charts", "confusion.png"))  # fmt: skip
        body = (f"<p>Detections with score &ge; {cm['score_threshold']:g} paired one to one with objects at IoU "
                f"&ge; {cm['iou_threshold']:g} (same class first). Last row: detections on background; last "
                "column: objects no detection found.</p>")  # fmt: skip
        section("confusion", "Confusion matrix", body + _figure("charts/confusion.png"))

    if "segm" in report and segm_analysis is not None:
        body = ("<p>The analysis above with masks instead of boxes: IoU of masks, object sizes from the "
                "annotations' areas and the masks' pixel counts (COCO's segm evaluation).</p>")  # fmt: skip
        body += _summary_body(report["segm"]) + "<h3>Error analysis of the masks</h3>"
        section("masks", "Masks (segm)", body + _errors_body(segm_analysis, report["segm"], output, "segm_"))

    if pictures:
        body = ('<p class="key">Ground truth: <span class="solid">solid green, class</span> &nbsp; detections: '
                '<span class="dashed">dashed, class score</span> (score &ge; the confusion threshold)</p>')  # fmt: skip
        body += '<div class="grid pictures">'
        body += "".join(_figure(p["file"], p["caption"], PICTURE_SIDE) for p in pictures) + "</div>"
        section("images", "Images", body)
    elif "images_note" in report:
        section("images", "Images", f'<div class="note">{_esc(report["images_note"])}</div>')

    data = report["dataset"]
    names = list(data["objects_per_class"])
    _chart_bars(names, [data["objects_per_class"][n] for n in names], "objects",
                os.path.join(output, "charts", "objects_per_class.png"))  # fmt: skip
    size_edges = [f"<{b}" if b is not None else "more" for b in data["size_bins"][1:]]
    _chart_histogram(size_edges, data["size_histogram"], "box size: sqrt(width x height), pixels",
                     os.path.join(output, "charts", "box_sizes.png"))  # fmt: skip
    ratio_edges = [f"{2**b:.2g}" for b in data["ratio_bins"][1:]]
    _chart_histogram(ratio_edges, data["ratio_histogram"], "aspect ratio height / width (upper bin edge)",
                     os.path.join(output, "charts", "aspect_ratios.png"))  # fmt: skip
    facts = [["images", data["images"]], ["images without objects", data["images_without_objects"]],
             ["objects", data["objects"]], ["crowd regions", data["crowds"]],
             ["boxes with no area", data["degenerate_boxes"]],
             ["small / medium / large boxes", " / ".join(map(str, data["small_medium_large"]))],
             ["image widths", data["image_width_range"]], ["image heights", data["image_height_range"]]]  # fmt: skip
    body = ("" if "errors" in report else notes) + _table(["", "value"], facts, sortable=False)
    body += '<div class="grid">' + _figure("charts/objects_per_class.png", "Objects per class")
    body += _figure("charts/box_sizes.png", "Box sizes (COCO: small < 32, large >= 96)")
    body += _figure("charts/aspect_ratios.png", "Aspect ratios") + "</div>"
    if "anchors" in report:
        body += _anchor_section(report["anchors"], output)
    section("dataset", "Data set", body)

    title = _esc(report.get("title", "detkit analyze"))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style>
<script>{SCRIPT}</script></head>
<body><header><h1>{title}</h1><p>{_esc(report.get("subtitle", ""))}</p></header>
<nav>{"".join(nav)}<span id="image-check" class="key"></span></nav>
<main>{"".join(sections)}</main></body></html>
"""
    path = os.path.join(output, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
