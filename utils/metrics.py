"""The masked MSE (one definition for training, logging and every analysis), and device tensors
turned into the plain numbers a log or a summary holds."""

from __future__ import annotations

import math

import torch

LOSSES = ("loss", "loss_obs", "loss_mask")  # the MSEs over all, observed and hidden entries


def masked_mse(pred: torch.Tensor, target: torch.Tensor, observed: torch.Tensor) -> dict:
    """MSE over all entries, observed entries and hidden entries (tensors, no host sync).

    `pred`, `target` and `observed` have the same shape; the mean over an empty set is NaN.
    """
    err = (pred.float() - target.float()).square()
    obs = observed.to(err.dtype)
    hid = 1.0 - obs
    return {
        "loss": err.mean(),
        "loss_obs": (err * obs).sum() / obs.sum(),
        "loss_mask": (err * hid).sum() / hid.sum(),
        "mask_value": (pred.float().abs() * hid).sum() / hid.sum(),
    }


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


def format_matrix(pred: torch.Tensor, target: torch.Tensor, observed: torch.Tensor) -> str:
    """Predicted matrix beside the truth; hidden entries marked with '*'."""
    rows = []
    for i in range(target.shape[0]):
        p = " ".join(
            f"{v:6.2f}{' ' if o else '*'}" for v, o in zip(pred[i].tolist(), observed[i].tolist())
        )
        t = " ".join(f"{v:6.2f}" for v in target[i].tolist())
        rows.append(f"  {p} | {t}")
    return "  prediction (* = hidden) | truth\n" + "\n".join(rows)


def better_axis(row: float | None, column: float | None, margin: float, floor: float) -> str:
    """Which of rows and columns a model's states hold better, by two scores of the same kind
    (a probe's R², a silhouette): `row` or `column` when its score is above `floor` and above
    the other's by `margin`, else `neither` (also when either score is missing)."""
    if row is None or column is None:
        return "neither"
    best, top, low = ("row", row, column) if row >= column else ("column", column, row)
    return best if top > floor and top - low > margin else "neither"
