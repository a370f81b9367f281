"""Whether a call runs eagerly, or is being recorded (TorchScript, tracing, compiling)."""

from __future__ import annotations

import torch

__all__ = ["eager_mode"]


def eager_mode() -> bool:
    """True unless TorchScript, tracing (`torch.jit.trace`, ONNX export) or `torch.compile` /
    `torch.export` is recording the call: run-time shortcuts (cached tensors, data-dependent
    paths) apply only in eager mode, so that recorded graphs keep the plain operations."""
    return not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling())
