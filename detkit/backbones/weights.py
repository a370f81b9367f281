"""Loading backbone weights: torchvision ImageNet checkpoints and detkit checkpoints.

Checkpoints are read with ``torch.load(path, map_location="cpu", weights_only=True)``; a file
holding other pickled Python objects is refused. torchvision keys are translated by one
explicit function per architecture (``torchvision key -> detkit key``, or None for keys
dropped on purpose, listed in `DROPPED_KEYS`); every other key must match exactly: a
missing, unexpected or mis-shaped key raises ValueError naming it and the file.

`convert_torchvision_state_dict` is public so that detection models can translate the
backbone part of torchvision detection checkpoints (``src_prefix="backbone."``).
BatchNorm's ``num_batches_tracked`` counters are dropped when the target norm has none
(FrozenBatchNorm2d) and left at their value when the checkpoint has none.

The architecture modules (vgg, mobilenet, fpn) are imported inside functions: they import
the registry, which imports this module.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from os import PathLike, fspath
from typing import Any

import torch
from torch import Tensor

from detkit.backbones.base import Backbone, StagedBackbone

KeyMap = Callable[[str], "str | None"]

#: torchvision keys dropped on purpose (classification heads), by architecture family
DROPPED_KEYS = {
    "resnet": ("fc.weight", "fc.bias"),
    "vgg": ("classifier.*",),
    "mobilenet_v2": ("classifier.*",),
    "alexnet": ("classifier.*",),
    "googlenet": ("aux1.*", "aux2.*", "fc.*"),
}

_NORM_PARAMS = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_CONV_PARAMS = r"(weight|bias)"


class UnexpectedKey(KeyError):
    """Raised by a key map for a key it does not know."""


# ---------------------------------------------------------------------------------------
# per-architecture key maps


def resnet_key_map(key: str) -> str | None:
    """torchvision ResNet key -> detkit ResNet key (None for the dropped fc layer).

    conv1 / bn1 -> stem.conv / stem.norm; layer{i}.{b}.conv{k} / bn{k} ->
    c{i+1}.{b}.conv{k}.conv / .norm; layer{i}.{b}.downsample.0 / .1 -> ...downsample.conv / .norm.
    """
    if key in DROPPED_KEYS["resnet"]:
        return None
    if key == "conv1.weight":
        return "stem.conv.weight"
    if m := re.fullmatch(rf"bn1\.{_NORM_PARAMS}", key):
        return f"stem.norm.{m[1]}"
    if m := re.fullmatch(r"layer([1-4])\.(\d+)\.conv([1-3])\.weight", key):
        return f"c{int(m[1]) + 1}.{m[2]}.conv{m[3]}.conv.weight"
    if m := re.fullmatch(rf"layer([1-4])\.(\d+)\.bn([1-3])\.{_NORM_PARAMS}", key):
        return f"c{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"
    if m := re.fullmatch(r"layer([1-4])\.(\d+)\.downsample\.0\.weight", key):
        return f"c{int(m[1]) + 1}.{m[2]}.downsample.conv.weight"
    if m := re.fullmatch(rf"layer([1-4])\.(\d+)\.downsample\.1\.{_NORM_PARAMS}", key):
        return f"c{int(m[1]) + 1}.{m[2]}.downsample.norm.{m[3]}"
    raise UnexpectedKey(key)


def vgg_key_map(depth: int, batch_norm: bool) -> KeyMap:
    """Key map for torchvision vgg{depth}[_bn]: features.{i} -> c{block}.conv{j}.conv / .norm.

    torchvision's `features` is a flat Sequential of conv, [bn,] relu per conv and a max
    pool after each block; the index table below is derived from the same block layout as
    `detkit.backbones.vgg.VGG`.
    """
    from detkit.backbones.vgg import VGG_CONVS_PER_BLOCK

    table: dict[int, tuple[str, str]] = {}  # features index -> (detkit path, "conv" | "norm")
    index = 0
    for block, num_convs in enumerate(VGG_CONVS_PER_BLOCK[depth], start=1):
        for j in range(1, num_convs + 1):
            table[index] = (f"c{block}.conv{j}", "conv")
            if batch_norm:
                table[index + 1] = (f"c{block}.conv{j}", "norm")
            index += 3 if batch_norm else 2  # conv, [bn,] relu
        index += 1  # max pool

    def key_map(key: str) -> str | None:
        if key.startswith("classifier."):
            return None
        if m := re.fullmatch(r"features\.(\d+)\.(\w+)", key):
            path, kind = table.get(int(m[1]), (None, None))
            allowed = _CONV_PARAMS if kind == "conv" else _NORM_PARAMS
            if path is not None and re.fullmatch(allowed, m[2]):
                return f"{path}.{kind}.{m[2]}"
        raise UnexpectedKey(key)

    return key_map


def mobilenet_v2_key_map(key: str) -> str | None:
    """torchvision MobileNetV2 key -> detkit key, placing features[i] by `mobilenet_v2_layout()`.

    Stem / final conv: features.{i}.0 / .1 -> {stage}.{pos}.conv / .norm. Inverted residual
    features.{i}.conv.{j}: [expand (j=0)], depthwise, project conv, project norm.
    """
    from detkit.backbones.mobilenet import mobilenet_v2_layout

    if key.startswith("classifier."):
        return None
    m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
    layout = mobilenet_v2_layout()
    if m is None or int(m[1]) >= len(layout):
        raise UnexpectedKey(key)
    slot, rest = layout[int(m[1])], m[2]
    base = f"{slot.stage}.{slot.position}"
    if slot.kind == "conv":
        if r := re.fullmatch(rf"0\.{_CONV_PARAMS}", rest):
            return f"{base}.conv.{r[1]}"
        if r := re.fullmatch(rf"1\.{_NORM_PARAMS}", rest):
            return f"{base}.norm.{r[1]}"
        raise UnexpectedKey(key)
    parts = (["expand"] if slot.expand else []) + ["depthwise", "project.conv", "project.norm"]
    if (r := re.fullmatch(r"conv\.(\d+)\.(.+)", rest)) and int(r[1]) < len(parts):
        part, param = parts[int(r[1])], r[2]
        if part in ("expand", "depthwise"):
            if p := re.fullmatch(rf"0\.{_CONV_PARAMS}", param):
                return f"{base}.{part}.conv.{p[1]}"
            if p := re.fullmatch(rf"1\.{_NORM_PARAMS}", param):
                return f"{base}.{part}.norm.{p[1]}"
        elif re.fullmatch(_CONV_PARAMS if part == "project.conv" else _NORM_PARAMS, param):
            return f"{base}.{part}.{param}"
    raise UnexpectedKey(key)


def alexnet_key_map(key: str) -> str | None:
    """torchvision AlexNet key -> detkit key: features.{0,3,6,8,10} -> c2.conv1, c3.conv2, c4.conv3-conv5."""
    from detkit.backbones.alexnet import ALEXNET_CONVS

    if key.startswith("classifier."):
        return None
    stages = ("c2", "c3", "c4", "c4", "c4")
    table = {index: f"{stage}.{conv[0]}" for index, stage, conv in zip((0, 3, 6, 8, 10), stages, ALEXNET_CONVS)}
    if (m := re.fullmatch(rf"features\.(\d+)\.{_CONV_PARAMS}", key)) and int(m[1]) in table:
        return f"{table[int(m[1])]}.conv.{m[2]}"
    raise UnexpectedKey(key)


def googlenet_key_map(key: str) -> str | None:
    """torchvision GoogLeNet key -> detkit key: conv1 -> c1.conv1, conv2 / conv3 -> c2.*,
    inception{3,4,5}x -> c{3,4,5}.inception{..}; `.bn.` -> `.norm.`; aux1 / aux2 / fc dropped."""
    if key.startswith(("aux1.", "aux2.", "fc.")):
        return None
    if m := re.fullmatch(rf"conv([1-3])\.(?:conv\.{_CONV_PARAMS}|bn\.{_NORM_PARAMS})", key):
        stage = "c1" if m[1] == "1" else "c2"
        return f"{stage}.conv{m[1]}." + (f"conv.{m[2]}" if m[2] else f"norm.{m[3]}")
    branch = r"(branch1|branch[23]\.[01]|branch4\.1)"
    if m := re.fullmatch(rf"inception([3-5][a-e])\.{branch}\.(?:conv\.{_CONV_PARAMS}|bn\.{_NORM_PARAMS})", key):
        from detkit.backbones.googlenet import GOOGLENET_BLOCKS

        stage = f"c{m[1][0]}"
        if f"inception{m[1]}" in GOOGLENET_BLOCKS[stage]:
            return f"{stage}.inception{m[1]}.{m[2]}." + (f"conv.{m[3]}" if m[3] else f"norm.{m[4]}")
    raise UnexpectedKey(key)


def fpn_key_map(body_map: KeyMap, in_features: tuple[str, ...]) -> KeyMap:
    """Key map for torchvision's BackboneWithFPN: body.* via `body_map`, fpn.* -> lateral / output / extra.

    fpn.inner_blocks.{i} -> lateral.{in_features[i]}, fpn.layer_blocks.{i} -> output.{in_features[i]}
    (with or without torchvision >= 0.13's ".0." conv / ".1." norm level), and
    fpn.extra_blocks.p6 / p7 (RetinaNet) -> extra.p6 / p7.
    """

    def key_map(key: str) -> str | None:
        if key.startswith("body."):
            mapped = body_map(key[len("body.") :])
            return None if mapped is None else f"body.{mapped}"
        m = re.fullmatch(r"fpn\.(inner|layer)_blocks\.(\d+)\.(?:([01])\.)?(\w+)", key)
        if m and int(m[2]) < len(in_features):
            module = "lateral" if m[1] == "inner" else "output"
            sub, params = ("norm", _NORM_PARAMS) if m[3] == "1" else ("conv", _CONV_PARAMS)
            if re.fullmatch(params, m[4]):
                return f"{module}.{in_features[int(m[2])]}.{sub}.{m[4]}"
        if m := re.fullmatch(rf"fpn\.extra_blocks\.(p6|p7)\.{_CONV_PARAMS}", key):
            return f"extra.{m[1]}.{m[2]}"
        raise UnexpectedKey(key)

    return key_map


_RESNETS = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
_DEFAULT_FPN_IN_FEATURES = ("c2", "c3", "c4", "c5")


def get_key_map(arch: str, *, fpn_in_features: tuple[str, ...] | None = None) -> KeyMap:
    """The torchvision -> detkit key map of `arch` ("resnet50", "vgg16_bn", "mobilenet_v2",
    "resnet50_fpn", ...). `fpn_in_features` names the FPN inputs (default c2..c5)."""
    if arch.endswith("_fpn"):
        return fpn_key_map(get_key_map(arch[: -len("_fpn")]), tuple(fpn_in_features or _DEFAULT_FPN_IN_FEATURES))
    if arch in _RESNETS:
        return resnet_key_map
    if m := re.fullmatch(r"vgg(11|13|16|19)(_bn)?", arch):
        return vgg_key_map(int(m[1]), batch_norm=bool(m[2]))
    if arch == "mobilenet_v2":
        return mobilenet_v2_key_map
    if arch == "alexnet":
        return alexnet_key_map
    if arch == "googlenet":
        return googlenet_key_map
    known = sorted(_RESNETS) + [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
    known += ["mobilenet_v2", "alexnet", "googlenet"]
    raise ValueError(f"no torchvision key map for architecture {arch!r}; known: {known} (and '<arch>_fpn')")


def convert_torchvision_state_dict(
    arch: str,
    state_dict: Mapping[str, Tensor],
    *,
    src_prefix: str = "",
    dst_prefix: str = "",
    fpn_in_features: tuple[str, ...] | None = None,
    source: str = "state dict",
) -> dict[str, Tensor]:
    """Translate the keys of a torchvision `arch` state dict to detkit's module layout.

    Only keys starting with `src_prefix` are converted (the prefix is replaced by
    `dst_prefix`); others are ignored, so a detection checkpoint can be converted part by
    part. Keys in `DROPPED_KEYS` are left out; any other unknown key raises ValueError.

    Example: ``convert_torchvision_state_dict("resnet50_fpn", ckpt, src_prefix="backbone.",
    dst_prefix="backbone.")`` for torchvision's fasterrcnn_resnet50_fpn checkpoint.
    """
    key_map = get_key_map(arch, fpn_in_features=fpn_in_features)
    converted: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        if not key.startswith(src_prefix):
            continue
        try:
            new_key = key_map(key[len(src_prefix) :])
        except UnexpectedKey:
            unexpected.append(key)
            continue
        if new_key is not None:
            converted[dst_prefix + new_key] = value
    if unexpected:
        raise ValueError(f"{source}: unexpected key(s) for torchvision {arch}: {_shorten(unexpected)}")
    return converted


# ---------------------------------------------------------------------------------------
# reading and loading


def read_checkpoint(path: str | PathLike) -> dict[str, Tensor]:
    """Load a state dict with `weights_only=True`; unwrap {"state_dict": ...} / {"model": ...}."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"refusing to load {fspath(path)!r}: torch.load(weights_only=True) rejected it because it "
            "holds pickled Python objects besides tensors (unsafe: unpickling can run arbitrary code). "
            f"Re-save only a state dict of tensors. Details: {e}"
        ) from None
    return _as_state_dict(obj, fspath(path))


def _as_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise TypeError(f"{source}: expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ValueError(f"{source}: state dict entries that are not tensors: {_shorten(not_tensors)}")
    return dict(obj)


def load_backbone_weights(
    backbone: Backbone,
    weights: str | PathLike | Mapping[str, Any],
    *,
    format: str = "auto",
    prefix: str = "",
) -> Backbone:
    """Load `weights` (a checkpoint path or a state dict) into `backbone`, strictly.

    Args:
        format: "detkit" (keys of `backbone.state_dict()`), "torchvision" (converted with
            the key map of `backbone.torchvision_arch`) or "auto": detkit when every key's
            first component names a child of the backbone, torchvision otherwise.
            For an FPN, a torchvision classification checkpoint (no "body." / "fpn." keys) or a
            detkit checkpoint of the bare backbone is loaded into its body; the FPN convs keep
            their initialisation.
        prefix: use only keys starting with `prefix`, stripped (e.g. "model.backbone.").

    Raises:
        ValueError naming the file and the missing / unexpected / mis-shaped keys.
    """
    if isinstance(weights, Mapping):
        source, state_dict = "state dict", _as_state_dict(weights, "state dict")
    else:
        source, state_dict = repr(fspath(weights)), read_checkpoint(weights)
    if prefix:
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise ValueError(f"{source}: no key starts with prefix {prefix!r}")
    if format not in ("auto", "detkit", "torchvision"):
        raise ValueError(f"format must be 'auto', 'detkit' or 'torchvision', got {format!r}")
    _load(backbone, state_dict, format, source)
    return backbone


def _child_names(backbone: Backbone) -> set[str]:
    return {name for name, _ in backbone.named_children()} | set(getattr(backbone, "pruned_stages", ()))


def _load(backbone: Backbone, state_dict: dict[str, Tensor], format: str, source: str) -> None:
    from detkit.backbones.fpn import FPN

    top = {k.split(".", 1)[0] for k in state_dict}
    is_fpn = isinstance(backbone, FPN)
    if format == "auto":
        if top <= _child_names(backbone):
            format = "detkit"
        elif is_fpn and top <= _child_names(backbone.body):  # a checkpoint of the body alone
            return _load(backbone.body, state_dict, "detkit", source)
        else:
            format = "torchvision"
    if format == "torchvision":
        if is_fpn and not top & {"body", "fpn"}:  # classification checkpoint: into the body
            return _load(backbone.body, state_dict, "torchvision", source)
        arch = backbone.torchvision_arch
        if arch is None:
            raise ValueError(
                f"{source}: keys do not match the {type(backbone).__name__} layout and it has no "
                f"torchvision architecture to convert from; first keys: {_shorten(list(state_dict))}"
            )
        fpn_in = backbone.in_features if is_fpn else None
        state_dict = convert_torchvision_state_dict(arch, state_dict, fpn_in_features=fpn_in, source=source)
    _load_checked(backbone, state_dict, source)


def _load_checked(model: Backbone, state_dict: dict[str, Tensor], source: str) -> None:
    expected = model.state_dict()
    pruned = tuple(
        f"{name}.{stage}." if name else f"{stage}."
        for name, module in model.named_modules()
        if isinstance(module, StagedBackbone)
        for stage in module.pruned_stages
    )
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(pruned)} if pruned else dict(state_dict)
    # BatchNorm counters: FrozenBatchNorm2d has none (drop them); a checkpoint may lack them
    state_dict = {k: v for k, v in state_dict.items() if k in expected or not k.endswith(".num_batches_tracked")}
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k} (checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)})"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing key(s): {_shorten(missing)}")
    if unexpected:
        problems.append(f"unexpected key(s): {_shorten(unexpected)}")
    if mis_shaped:
        problems.append(f"shape mismatch: {_shorten(mis_shaped)}")
    if problems:
        raise ValueError(f"cannot load {source} into {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=False)


def _shorten(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
