"""The process: seeds, the device and its precision, memory errors as one line, Ctrl-C and
SIGTERM as a request to stop after the current step, a progress bar that leaves no debris."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

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


class Interrupted(UserError):
    """Ctrl-C or SIGTERM stopped the run after a checkpoint; the message says how to resume."""

    exit_code = 130


@contextlib.contextmanager
def stop_requests() -> Iterator[dict]:
    """While inside, SIGINT (Ctrl-C) and SIGTERM set `flag["signal"]` instead of killing the
    process, so the loop can finish its step and save; a second one stops at once."""
    flag: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be set from the main thread
        return
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if flag["signal"] is not None:  # asked twice: stop now
            signal.signal(signum, old[signum])
            signal.raise_signal(signum)
            return
        flag["signal"] = signal.Signals(signum).name
        # os.write, not print: a handler may interrupt a write to the same stream
        os.write(
            2, f"\n{flag['signal']}: finishing this step and saving (again to stop now)\n".encode()
        )

    for sig in old:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def clear_on_error(bar: Any) -> Iterator[None]:
    """Wipe the progress bar when the loop fails, so the error is the one line left."""
    try:
        yield
    except BaseException:
        bar.leave = False
        close_bar(bar)
        raise


def close_bar(bar: Any) -> None:
    """Close the bar; in a log file (not a terminal) end its last line, so that what is
    printed next starts a line of its own."""
    shown = bar.n > bar.initial or bar.last_print_n > bar.initial
    bar.close()
    if shown and not sys.stderr.isatty():
        sys.stderr.write("\n")
