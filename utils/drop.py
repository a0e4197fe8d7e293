"""The sudden drop: where a logged loss curve's plateau is, and where it ends."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import numpy as np


def _running_median(x: np.ndarray, window: int) -> np.ndarray:
    half = window // 2
    return np.array([np.median(x[max(0, i - half) : i + half + 1]) for i in range(len(x))])


def detect_drop(
    steps: list[int],
    losses: list[float],
    min_plateau_frac: float = 0.05,
    flat_ratio: float = 1.5,
    onset_ratio: float = 1.2,
    drop_ratio: float = 3.0,
    window: int = 5,
) -> dict:
    """Find the plateau and the step where the sudden drop starts, from a logged loss curve.

    Method: smooth log10(loss) with a running median over `window` logged points. A plateau is a
    stretch covering at least `min_plateau_frac` of the run (and 3 points) whose smoothed loss
    stays within a factor `flat_ratio`; its level is the median there. The first plateau after
    which the loss falls below level / `drop_ratio` for good is the one that ends in the drop.
    The drop ends at the first point below level / `drop_ratio`, and starts at the last point
    before that where the smoothed loss is still within a factor `onset_ratio` of the level.

    Returns plateau_loss, drop_step, drop_end_step (None where there is no such drop) and
    `drop_kind`: "sudden" (that drop), "partial" (no such drop, but after the first plateau the
    smoothed loss fell by more than `onset_ratio`: a drop cut short, or one that stopped on a
    second stretch above level / `drop_ratio`), "none" (it never fell that far) or None (no
    plateau at all). Without a sudden drop the plateau is the first flat stretch, the one the
    curve leaves first, never a later stretch the loss reached by falling. `fall` is the plateau
    level over the lowest smoothed loss after it, at `fall_step`; for a partial drop it starts at
    `fall_start_step` (the last point within `onset_ratio` of the level before the lowest).
    """
    none = {
        "plateau_loss": None,
        "drop_step": None,
        "drop_end_step": None,
        "drop_kind": None,
        "fall": None,
        "fall_step": None,
        "fall_start_step": None,
    }
    steps_a = np.asarray(steps, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if len(loss) < 3 * window or not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        return none
    s = np.log10(_running_median(loss, window))
    future_max = np.maximum.accumulate(s[::-1])[::-1]  # max over j ≥ i
    min_span = min_plateau_frac * (steps_a[-1] - steps_a[0])
    flat, fall, onset = np.log10(flat_ratio), np.log10(drop_ratio), np.log10(onset_ratio)

    def after(level: float, last: int) -> dict:
        """The fall from `level` to the lowest smoothed loss after index `last`."""
        if last + 1 >= len(s):
            return {"fall": 1.0, "fall_step": None}
        low = last + 1 + int(np.argmin(s[last + 1 :]))
        return {"fall": float(10 ** (level - s[low])), "fall_step": int(steps_a[low]), "low": low}

    for i in range(2, len(s)):
        a = int(np.searchsorted(steps_a, steps_a[i] - min_span, side="right")) - 1
        a = max(0, min(a, i - 2))
        if steps_a[i] - steps_a[a] < min_span:
            continue
        win = s[a : i + 1]
        if win.max() - win.min() > flat:
            continue
        level = float(np.median(win))
        if not np.any(future_max[i + 1 :] < level - fall):
            continue
        end = i + 1 + int(np.nonzero(s[i + 1 :] < level - fall)[0][0])
        near = np.nonzero(s[i:end] >= level - onset)[0]
        start = i + (int(near[-1]) if len(near) else 0)
        low = after(level, i)
        return {
            **none,
            "plateau_loss": float(10**level),
            "drop_step": int(steps_a[start]),
            "drop_end_step": int(steps_a[end]),
            "drop_kind": "sudden",
            "fall": low["fall"],
            "fall_step": low["fall_step"],
        }
    # No sudden drop: the first flat stretch is the plateau; how far the loss fell after it.
    for a, b in _flat_stretches(s, flat):
        if b - a >= 2 and steps_a[b] - steps_a[a] >= min_span:
            level = float(np.median(s[a : b + 1]))
            low = after(level, b)
            out = {**none, "plateau_loss": float(10**level), "drop_kind": "none"}
            out.update(fall=low["fall"], fall_step=low["fall_step"])
            if low["fall"] > onset_ratio:
                near = np.nonzero(s[a : low["low"]] >= level - onset)[0]  # a: the stretch's start
                out["drop_kind"] = "partial"
                out["fall_start_step"] = int(steps_a[a + (int(near[-1]) if len(near) else 0)])
            return out
    return none


def describe_drop(drop: dict) -> str:
    """The drop in a few words, for a printed summary."""
    kind = drop.get("drop_kind")
    if kind == "sudden":
        return f"sudden, steps {drop['drop_step']} to {drop['drop_end_step']}"
    if kind == "partial":
        return (
            f"partial: {drop['fall']:.3g}× below the plateau by step {drop['fall_step']} "
            f"(from step {drop['fall_start_step']}), never a third of it"
        )
    if kind == "none":
        return "none found (the loss stayed near its first plateau)"
    return "no plateau found"


def _flat_stretches(s: np.ndarray, flat: float) -> Iterator[tuple[int, int]]:
    """For each start a, (a, b) with b the last index such that s[a..b] spans at most `flat`;
    in linear time (b never moves back; running max and min in monotone queues), so that a
    run logged at thousands of points is summarised at once."""
    highs: collections.deque[int] = collections.deque()  # indices of s[a..b], values falling
    lows: collections.deque[int] = collections.deque()  # and rising
    b = -1
    for a in range(len(s)):
        if b < a:
            b = a
            highs, lows = collections.deque([a]), collections.deque([a])
        while b + 1 < len(s) and max(s[highs[0]], s[b + 1]) - min(s[lows[0]], s[b + 1]) <= flat:
            b += 1
            while highs and s[highs[-1]] <= s[b]:
                highs.pop()
            while lows and s[lows[-1]] >= s[b]:
                lows.pop()
            highs.append(b)
            lows.append(b)
        yield a, b
        for q in (highs, lows):
            if q and q[0] == a:
                q.popleft()
