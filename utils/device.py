"""Where and how a script computes: seeds, the device and its precision, memory errors as one
line."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from utils.config import UserError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on a CPU): before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; anything else is taken as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but CUDA is not available here")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{name}' asked for, but MPS is not available here")
    return device


@contextlib.contextmanager
def allocation_errors(hint: str) -> Iterator[None]:
    """Turn an allocation failure (CPU or GPU memory) inside the block into a one-line error
    that says which options to lower."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError) as e:
        raise UserError(f"out of memory ({type(e).__name__}): {hint}") from None
    except RuntimeError as e:
        text = str(e)
        if "can't allocate" in text or "out of memory" in text or "not enough memory" in text:
            first = text.strip().splitlines()[0][:160]
            raise UserError(f"out of memory ({first}): {hint}") from None
        raise


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware: a CUDA GPU that supports bf16, or a
    CPU whose oneDNN has bf16 kernels (AMX or AVX-512 BF16). Elsewhere bf16 is emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch built without oneDNN
            return False
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` becomes bf16 where the device has native bf16 matmuls, else fp32; the rest stay.

    Why: on a CPU without bf16 kernels, autocast's bf16 matmuls are emulated: a step of
    configs/train_tiny.yaml took 37.5 s in bf16 against 2.56 s in fp32 on a loaded 2-core AVX2
    machine (docs/results/cpu_demo/precision), while on a CPU with AMX bf16 was the faster one.
    """
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"
