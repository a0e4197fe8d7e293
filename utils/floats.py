"""Device tensors turned into the plain numbers a log or a summary holds (one host sync for
the lot), non-finite values as None so a record stays valid JSON."""

from __future__ import annotations

import math

import torch


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def to_floats(metrics: dict) -> dict:
    """Tensors to Python floats (one host sync for the lot)."""
    keys = list(metrics)
    values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
    return dict(zip(keys, values))


def to_lists(metrics: dict) -> dict:
    """Tensors of any shape to Python floats and nested lists, to 5 significant digits (one host
    sync for the lot); non-finite values become None so the record stays valid JSON."""
    if not metrics:
        return {}
    keys = list(metrics)
    flat = torch.cat([metrics[k].detach().float().reshape(-1) for k in keys]).cpu()
    out, i = {}, 0
    for k in keys:
        shape, size = metrics[k].shape, metrics[k].numel()
        values = [finite_or_none(float(f"{v:.5g}")) for v in flat[i : i + size].tolist()]
        i += size
        for dim in reversed(shape[1:]):  # nest row-major: [L, H] -> L lists of H
            values = [values[j : j + dim] for j in range(0, len(values), dim)]
        out[k] = values[0] if not shape else values
    return out
