"""Files that must survive a crash: folders made with a one-line error, atomic writes (a
temporary file, synced, renamed, its folder synced), JSON written that way."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from utils.config import UserError


def make_dir(path: Path, key: str) -> Path:
    """Create folder `path` (and its parents); a one-line error naming the config `key` when a
    file is in the way or the folder cannot be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"'{key}' {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"'{key}': cannot create {path} ({e.strerror})") from None
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (where the OS allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """`write(file)` into a temp file beside `path`, fsync, rename, fsync the folder: a crash
    never leaves a half-written file under `path`, and a written one survives a power cut
    (train.py removes the temp files a killed save leaves)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")
