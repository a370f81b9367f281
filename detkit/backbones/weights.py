"""Loading backbone weights: torchvision ImageNet checkpoints and detkit checkpoints.

Checkpoints are read with ``torch.load(path, map_location="cpu", weights_only=True)``; a file
holding other pickled Python objects is refused. torchvision keys are translated by one
explicit function per architecture (``torchvision key -> detkit key``, or None for keys
dropped on purpose, listed in `DROPPED_KEYS`); every other key must match exactly: a
missing, unexpected or mis-shaped key raises ValueError naming it and the file.

This module is generic: each backbone module owns the key map of its layout (e.g.
`detkit.backbones.vgg.torchvision_key_map`) and registers it here at import with
`register_key_maps`; the FPN registers a wrapper for the "<arch>_fpn" names with
`register_key_map_wrapper`. Nothing here imports an architecture module, so the imports
between the backbone modules have no cycle.

`convert_torchvision_state_dict` is public so that detection models can translate the
backbone part of torchvision detection checkpoints (``src_prefix="backbone."``).
BatchNorm's ``num_batches_tracked`` counters are dropped when the target norm has none
(FrozenBatchNorm2d) and left at their value when the checkpoint has none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from os import PathLike, fspath
from typing import Any

from torch import Tensor

from detkit.backbones.base import Backbone, StagedBackbone
from detkit.utils.checkpoint import load_checkpoint

KeyMap = Callable[[str], "str | None"]
#: wrapper(body_map, in_features) -> key map of a backbone wrapping another (FPN)
KeyMapWrapper = Callable[[KeyMap, "tuple[str, ...] | None"], KeyMap]

#: regular expressions of the parameter / buffer names of a norm and of a conv, for the key maps
NORM_PARAMS = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
CONV_PARAMS = r"(weight|bias)"

DROPPED_KEYS: dict[str, tuple[str, ...]] = {}
"""torchvision keys dropped on purpose (classification heads), by architecture family
("resnet", "vgg", "mobilenet_v2", "alexnet", "googlenet"); filled by `register_key_maps`."""

_KEY_MAPS: dict[str, KeyMap] = {}  # torchvision architecture -> key map
_WRAPPERS: dict[str, KeyMapWrapper] = {}  # architecture suffix ("_fpn") -> wrapper


class UnexpectedKey(KeyError):
    """Raised by a key map for a key it does not know."""


def register_key_maps(family: str, key_maps: Mapping[str, KeyMap], *, dropped: Sequence[str] = ()) -> None:
    """Make the torchvision architectures `key_maps` names convertible (called by the backbone modules).

    Args:
        family: architecture family, the key of `DROPPED_KEYS` ("resnet", "vgg", ...).
        key_maps: torchvision architecture name ("resnet50", "vgg16_bn", ...) -> key map.
        dropped: torchvision keys (``*`` = any suffix) the key maps drop on purpose.

    Raises ValueError if an architecture or the family is registered already.
    """
    taken = sorted(set(key_maps) & set(_KEY_MAPS))
    if taken or family in DROPPED_KEYS:
        raise ValueError(f"torchvision key maps already registered for {taken or family!r}")
    _KEY_MAPS.update(key_maps)
    DROPPED_KEYS[family] = tuple(dropped)


def register_key_map_wrapper(suffix: str, wrapper: KeyMapWrapper) -> None:
    """Key maps of "<arch><suffix>" wrap the key map of "<arch>": ``wrapper(body_map, in_features)``."""
    if suffix in _WRAPPERS:
        raise ValueError(f"a torchvision key map wrapper for {suffix!r} is already registered")
    _WRAPPERS[suffix] = wrapper


def get_key_map(arch: str, *, fpn_in_features: tuple[str, ...] | None = None) -> KeyMap:
    """The torchvision -> detkit key map of `arch` ("resnet50", "vgg16_bn", "mobilenet_v2",
    "resnet50_fpn", ...). `fpn_in_features` names the FPN inputs (default c2..c5)."""
    for suffix, wrapper in _WRAPPERS.items():
        if arch.endswith(suffix) and arch != suffix:
            return wrapper(get_key_map(arch[: -len(suffix)]), fpn_in_features)
    if arch in _KEY_MAPS:
        return _KEY_MAPS[arch]
    wrapped = "".join(f" (and '<arch>{suffix}')" for suffix in _WRAPPERS)
    raise ValueError(f"no torchvision key map for architecture {arch!r}; known: {sorted(_KEY_MAPS)}{wrapped}")


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
    """Load a state dict with `weights_only=True` (`detkit.utils.checkpoint.load_checkpoint`: one-line
    errors, never unsafe unpickling); unwrap {"state_dict": ...} / {"model": ...}."""
    return as_state_dict(load_checkpoint(path), fspath(path))


def as_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
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
        ValueError: naming the file and the missing / unexpected / mis-shaped keys.
    """
    if isinstance(weights, Mapping):
        source, state_dict = "state dict", as_state_dict(weights, "state dict")
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


def _wrapped_body(backbone: Backbone) -> Backbone | None:
    """The backbone a wrapper (FPN) keeps as its child `body`, None for a plain backbone."""
    body = getattr(backbone, "body", None)
    return body if isinstance(body, Backbone) else None


def _load(backbone: Backbone, state_dict: dict[str, Tensor], format: str, source: str) -> None:
    top = {k.split(".", 1)[0] for k in state_dict}
    body = _wrapped_body(backbone)
    if format == "auto":
        if top <= _child_names(backbone):
            format = "detkit"
        elif body is not None and top <= _child_names(body):  # a checkpoint of the body alone
            return _load(body, state_dict, "detkit", source)
        else:
            format = "torchvision"
    if format == "torchvision":
        if body is not None and not top & {"body", "fpn"}:  # classification checkpoint: into the body
            return _load(body, state_dict, "torchvision", source)
        arch = backbone.torchvision_arch
        if arch is None:
            raise ValueError(
                f"{source}: keys do not match the {type(backbone).__name__} layout and it has no "
                f"torchvision architecture to convert from; first keys: {_shorten(list(state_dict))}"
            )
        fpn_in = getattr(backbone, "in_features", None) if body is not None else None
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
