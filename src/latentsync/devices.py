"""Device and dtype choice, and the check that a device exists here and computes in a dtype.

Importing this module does not import torch (the command line lists the dtype names and checks its other arguments
before paying for it); the functions import it when they run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .errors import DeviceError, first_line

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DTYPE_NAMES: dict[str, str] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
"""Precision names accepted by the command line, the app and the configs -> the name of the torch dtype."""

DEVICE_KINDS = ("cpu", "cuda", "mps")


def torch_dtype(name: str) -> "torch.dtype":
    """The torch dtype called ``name`` (a key of [`DTYPE_NAMES`])."""
    import torch  # deferred: torch takes seconds to import; the command line checks its arguments first

    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    return getattr(torch, DTYPE_NAMES[name])


def default_device() -> str:
    """The best available device: ``cuda``, then Apple ``mps``, else ``cpu``."""
    import torch  # deferred: torch takes seconds to import; the command line checks its arguments first

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_dtype(device: "str | torch.device") -> "torch.dtype":
    """fp32 on the CPU, fp16 on an accelerator (the SD VAE then decodes in fp32, see the pipeline)."""
    import torch  # deferred: torch takes seconds to import; the command line checks its arguments first

    return torch.float32 if torch.device(device).type == "cpu" else torch.float16


def fastest_dtype(device: "str | torch.device") -> "torch.dtype":
    """The quickest dtype for inference on ``device``: bf16 on a CUDA GPU that supports it (on an H100 it is faster
    than fp16, which decodes the VAE in fp32; see the README's benchmarks), fp16 on other accelerators, fp32 on the
    CPU."""
    import torch  # deferred: torch takes seconds to import; the command line checks its arguments first

    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return default_dtype(device)


def resolve_dtype(name: str | None, device: "str | torch.device") -> "torch.dtype":
    """The dtype called ``name`` (a key of [`DTYPE_NAMES`]), or the device's default when ``name`` is None."""
    return default_dtype(device) if name is None else torch_dtype(name)


def available_devices() -> list[str]:
    """The devices this machine has: ``cpu``, then ``cuda:0`` ... and ``mps`` when present."""
    import torch  # deferred: torch takes seconds to import; the command line checks its arguments first

    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: str | None = None, dtype: str | None = None) -> "tuple[str, torch.dtype]":
    """The device and torch dtype to run on, checked: ``device`` (default: the best available) must exist on this
    machine, and a few operations of the model (convolution, group norm, attention) must run on it in ``dtype``
    (default: fp32 on the CPU, fp16 on a GPU).

    Raises:
        DeviceError: an unknown or unavailable device (the message lists the available ones), or a dtype the device
            cannot compute in.
    """
    import torch  # deferred: torch takes seconds to import; the command line checks its arguments first

    device = device or default_device()
    available = available_devices()
    try:
        kind = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {device!r}: use one of {', '.join(available)}") from None
    if kind.type not in DEVICE_KINDS:
        raise DeviceError(f"device {device!r} is not supported: use one of {', '.join(available)}")
    index_ok = kind.type != "cuda" or kind.index is None or f"cuda:{kind.index}" in available
    if not index_ok or not any(name.split(":")[0] == kind.type for name in available):
        raise DeviceError(f"device {device!r} is not available on this machine; available: {', '.join(available)}")
    resolved = resolve_dtype(dtype, device)
    native_bf16 = kind.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)
    if resolved == torch.bfloat16 and not native_bf16:
        raise DeviceError(f"{torch.cuda.get_device_name(kind)} has no native bf16: use --dtype fp16 or fp32")
    try:
        _smoke_test(kind, resolved)
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        reason = first_line(exc)
        raise DeviceError(f"{device} cannot compute in {dtype or resolved} ({reason}): use fp32") from None
    if kind.type == "cpu" and resolved == torch.float16:
        logger.warning("fp16 on a CPU is much slower than fp32 (the default there)")
    return device, resolved


def _smoke_test(device: "torch.device", dtype: "torch.dtype") -> None:
    """Run the kinds of operations the model uses on a few numbers, so that an unsupported dtype fails here."""
    import torch  # deferred: torch takes seconds to import; the command line checks its arguments first
    import torch.nn.functional as F  # deferred: as above

    x = torch.ones(1, 4, 8, 8, device=device, dtype=dtype)
    y = F.group_norm(F.conv2d(x, torch.ones(4, 4, 3, 3, device=device, dtype=dtype), padding=1), 2)
    q = y.flatten(2).transpose(1, 2).unsqueeze(1)
    F.scaled_dot_product_attention(q, q, q).sum().item()
