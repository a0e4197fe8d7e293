"""The process: seeds, the device, and memory errors as one line."""

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
