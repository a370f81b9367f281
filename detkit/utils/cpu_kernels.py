"""The switch of detkit's CPU-only kernels (threaded RoIAlign, strided stem max pool, masked CPU
paths): `DETKIT_CPU_KERNELS=0` turns them off, so a CPU runs the code that runs on CUDA."""

from __future__ import annotations

import os

import torch

__all__ = ["cpu_kernels_enabled", "eager_mode"]


def cpu_kernels_enabled() -> bool:
    """False when the environment sets DETKIT_CPU_KERNELS=0: CPU-only paths are skipped and
    every call runs the code that also runs on CUDA (to count or test that path on a CPU).
    Read at each call, so a test or benchmark may set it at any time."""
    return os.environ.get("DETKIT_CPU_KERNELS", "1") != "0"


def eager_mode() -> bool:
    """True unless TorchScript, tracing (`torch.jit.trace`, ONNX export) or `torch.compile` /
    `torch.export` is recording the call: run-time shortcuts (cached tensors, data-dependent
    paths) apply only in eager mode, so that recorded graphs keep the plain operations."""
    return not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling())
