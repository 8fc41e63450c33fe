"""Where training runs (``training.device``) and in which precision (``training.precision``).

``auto`` trains on the GPU when torch sees one and on the CPU otherwise; asking for ``cuda`` on a
machine without one is a configuration error, reported before any data is read. Mixed precision
runs the matrix products under ``torch.autocast`` (bf16 or fp16) while the weights, the optimizer
state and the loss reductions stay fp32.
"""

from __future__ import annotations

import contextlib

import torch

from inclust_plus.errors import InclustError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """The torch device for ``training.device`` (``auto``: CUDA when available, else CPU)."""
    if name not in DEVICES:
        raise InclustError(f"unknown training.device {name!r}", f"choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InclustError("training.device is 'cuda' but torch sees no CUDA GPU here",
                           "use --device cpu (or auto), or install a CUDA build of torch on a GPU machine")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """A context that runs the forward pass in ``precision`` on ``device`` (fp32: no autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str):
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none (None).

    The scale starts at 1, not torch's 65536: inClust+ losses are large (a reconstruction weight of
    up to 1000 times a sum over features), so the default overflows fp16 for the first ~15 steps,
    which a short run never recovers from. The scaler still grows it while no step overflows.
    """
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type, init_scale=1.0, growth_interval=200)
