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
    Returns plateau_loss, drop_step, drop_end_step (None where there is no such drop). Without a
    (finished) drop, plateau_loss is still the level of the run's longest flat stretch, if any.
    """
    none = {"plateau_loss": None, "drop_step": None, "drop_end_step": None}
    steps_a = np.asarray(steps, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if len(loss) < 3 * window or not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        return none
    s = np.log10(_running_median(loss, window))
    future_max = np.maximum.accumulate(s[::-1])[::-1]  # max over j ≥ i
    min_span = min_plateau_frac * (steps_a[-1] - steps_a[0])
    flat, fall, onset = np.log10(flat_ratio), np.log10(drop_ratio), np.log10(onset_ratio)
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
        return {
            "plateau_loss": float(10**level),
            "drop_step": int(steps_a[start]),
            "drop_end_step": int(steps_a[end]),
        }
    # No drop (or not yet complete): the level of the longest flat stretch, if there is one.
    best = None
    for a, b in _flat_stretches(s, flat):
        if b - a >= 2 and steps_a[b] - steps_a[a] >= min_span:
            if best is None or steps_a[b] - steps_a[a] > steps_a[best[1]] - steps_a[best[0]]:
                best = (a, b)
    if best is not None:
        return {**none, "plateau_loss": float(10 ** np.median(s[best[0] : best[1] + 1]))}
    return none


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
