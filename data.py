"""Low-rank matrices, observation masks and tokens: the data every script trains or tests on.

A matrix is X = U Vᵀ with U (m×r) and V (n×r) drawn i.i.d. from a factor distribution (the paper:
Unif[−1, 1]), rounded to `prec` decimals. Each entry is hidden with probability `p_mask`;
`observed` is True where the entry is visible.

Tokens (worked examples with the paper's prec = 2, min_vocab = −10, max_vocab = 10):

    MASK (hidden entry)  -> 0
    value v              -> 1 + round(v · 10^prec) − round(min_vocab · 10^prec)
        −10.00 -> 1          −0.24 -> 1 − 24 + 1000 = 977
          0.00 -> 1001        0.44 -> 1 + 44 + 1000 = 1045
         10.00 -> 2001

so the vocabulary holds 2 + (max_vocab − min_vocab) · 10^prec = 2002 ids. The matrix is flattened
row-major: entry (i, j) of an m×n matrix sits at position i·n + j. The regression target is the
rounded value, i.e. exactly what the token encodes. We round the integer k = round(v · 10^prec)
and build the id from it. The authors' code converted the rounded float32 value with a truncating
cast; for their BERT's ids that gives the exact id for every value with |v| ≤ 5 (checked in float32:
no value is off), while their GPT's tokenizer (offset 200 instead of 1000) is one id low for −1.20,
−1.19, −1.08 and −1.07 (src/gpt/sequences.py rounds the integer as here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from utils.config import DataRangeError, UserError, opt

DISTRIBUTIONS = ("uniform", "gaussian", "laplace")


@dataclass
class DataConfig:
    m: int = opt(7, "rows of each matrix")
    n: int = opt(7, "columns of each matrix")
    rank: int = opt(2, "rank r of X = U Vᵀ")
    distribution: str = opt("uniform", "factor distribution of U and V", DISTRIBUTIONS)
    min_val: float = opt(-1.0, "uniform factors: lower end")
    max_val: float = opt(1.0, "uniform factors: upper end")
    scale: float = opt(1.0, "gaussian: standard deviation; laplace: scale b")
    prec: int = opt(2, "decimals kept; values and tokens are rounded to this")
    p_mask: float = opt(0.3, "probability that an entry is hidden (replaced by MASK)")
    min_vocab: float = opt(-10.0, "smallest value with a token")
    max_vocab: float = opt(10.0, "largest value with a token")
    sizes: list[int] = opt([], "mixture of square sizes, one drawn per batch (empty: m×n always)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_mask < 1.0:
            raise UserError(f"'data.p_mask' must be in [0, 1), got {self.p_mask}")
        if self.m < 1 or self.n < 1:
            raise UserError(f"'data.m' and 'data.n' must be positive, got {self.m}×{self.n}")
        sizes = [(self.m, self.n)] + [(s, s) for s in self.sizes]
        for m, n in sizes:
            if not 1 <= self.rank <= min(m, n):
                raise UserError(
                    f"'data.rank' = {self.rank} must be in [1, min(m, n) = {min(m, n)}]"
                )
        if self.prec < 0:
            raise UserError(f"'data.prec' must be ≥ 0, got {self.prec}")
        if self.min_vocab >= self.max_vocab:
            raise UserError("'data.min_vocab' must be below 'data.max_vocab'")
        if self.distribution == "uniform" and self.min_val >= self.max_val:
            raise UserError("'data.min_val' must be below 'data.max_val'")
        if self.distribution != "uniform" and self.scale <= 0:
            raise UserError(f"'data.scale' must be positive, got {self.scale}")

    @property
    def vocab_size(self) -> int:
        return vocab_size(self.prec, self.min_vocab, self.max_vocab)

    @property
    def max_tokens(self) -> int:
        """The longest sequence this data makes (m·n, or the largest size of the mixture)."""
        return max([self.m * self.n] + [s * s for s in self.sizes])


class Batch(NamedTuple):
    """One batch of matrices, flattened row-major to T = m·n positions."""

    input_ids: torch.Tensor  # [B, T] long: value tokens, 0 (MASK) where hidden
    target: torch.Tensor  # [B, T] float: the rounded matrix entries (all of them)
    observed: torch.Tensor  # [B, T] bool: True where the entry is visible
    m: int
    n: int


def _scale(prec: int) -> int:
    return 10**prec


def vocab_size(prec: int = 2, min_vocab: float = -10.0, max_vocab: float = 10.0) -> int:
    """MASK plus one id per representable value: 2002 for the paper's setting."""
    return 2 + round((max_vocab - min_vocab) * _scale(prec))


def tokenize(
    values: torch.Tensor,
    observed: torch.Tensor,
    prec: int = 2,
    min_vocab: float = -10.0,
    max_vocab: float = 10.0,
    check: bool = True,
) -> torch.Tensor:
    """Token ids [..., m·n] (row-major) for `values` [..., m, n]; MASK (0) where not observed.

    With `check`, an observed value outside [min_vocab, max_vocab] is an error (one host sync);
    the sampler skips the check when its distribution cannot leave the vocabulary.
    """
    k = torch.round(values.float() * _scale(prec)).long()
    lo, hi = round(min_vocab * _scale(prec)), round(max_vocab * _scale(prec))
    if check:
        bad = observed & ((k < lo) | (k > hi))
        if bool(bad.any()):
            v = values[bad].flatten()[0].item()
            raise DataRangeError(
                f"value {v:.{prec}f} is outside the vocabulary [{min_vocab}, {max_vocab}] "
                "(data.min_vocab, data.max_vocab; a checkpoint's are fixed): draw smaller values "
                "(data.scale, data.rank, data.distribution) or train with a wider vocabulary"
            )
    ids = torch.where(observed, 1 + k - lo, torch.zeros_like(k))
    return ids.flatten(-2)


def detokenize(
    ids: torch.Tensor, m: int, n: int, prec: int = 2, min_vocab: float = -10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `tokenize`: (values [..., m, n] with 0 where hidden, observed [..., m, n])."""
    ids = ids.reshape(*ids.shape[:-1], m, n)
    observed = ids != 0
    lo = round(min_vocab * _scale(prec))
    values = (ids - 1 + lo).float() / _scale(prec)
    return torch.where(observed, values, torch.zeros_like(values)), observed


def round_values(values: torch.Tensor, prec: int) -> torch.Tensor:
    """What a token encodes: round(v · 10^prec) / 10^prec."""
    return torch.round(values * _scale(prec)) / _scale(prec)


def make_batch(values: torch.Tensor, observed: torch.Tensor, cfg: DataConfig, check=True) -> Batch:
    """A Batch from given matrices [B, m, n] and visibility [B, m, n] (rounds the values)."""
    values = round_values(values.float(), cfg.prec)
    m, n = values.shape[-2:]
    ids = tokenize(values, observed, cfg.prec, cfg.min_vocab, cfg.max_vocab, check=check)
    return Batch(ids, values.flatten(-2), observed.flatten(-2), m, n)


def value_at_hidden(batch: Batch, value: float, cfg: DataConfig) -> tuple[torch.Tensor, float]:
    """Input ids [B, T] of `batch` with the token of `value` where MASK was (paper Table 1: a
    model that only copies then outputs that value at the hidden entries), and the value the
    token encodes (`value` rounded to `cfg.prec`), the one a copier outputs."""
    value = round_values(torch.tensor(float(value)), cfg.prec).item()
    shape = (-1, batch.m, batch.n)
    filled = torch.where(batch.observed, batch.target, value).reshape(shape)
    everywhere = torch.ones_like(batch.observed).reshape(shape)
    return tokenize(filled, everywhere, cfg.prec, cfg.min_vocab, cfg.max_vocab), value


def value_tokens(
    cfg: DataConfig, value_min: float, value_max: float, key: str = "value_min/value_max"
) -> tuple[np.ndarray, list]:
    """(every representable value in [value_min, value_max], its token id); an error names the
    config `key` that chose the range."""
    if value_min < cfg.min_vocab or value_max > cfg.max_vocab:
        raise UserError(
            f"{key} [{value_min}, {value_max}] leave the checkpoint's "
            f"vocabulary [{cfg.min_vocab}, {cfg.max_vocab}]"
        )
    scale = 10**cfg.prec
    k = np.arange(
        int(np.ceil(value_min * scale - 1e-9)), int(np.floor(value_max * scale + 1e-9)) + 1
    )
    if len(k) < 3:
        raise UserError(f"{key} hold {len(k)} values at prec {cfg.prec}; need ≥ 3")
    values = k / scale
    observed = torch.ones(1, len(k), dtype=torch.bool)
    ids = tokenize(
        torch.tensor(values).view(1, -1), observed, cfg.prec, cfg.min_vocab, cfg.max_vocab
    )
    return values, ids.tolist()


def structured_observed(
    m: int,
    n: int,
    hidden_rows: list[int] = (),
    hidden_cols: list[int] = (),
    keep: list[tuple[int, int]] = (),
) -> torch.Tensor:
    """One visibility pattern [m, n]: hide whole rows and columns, except the entries in `keep`."""
    observed = torch.ones(m, n, dtype=torch.bool)
    for i in hidden_rows:
        observed[i, :] = False
    for j in hidden_cols:
        observed[:, j] = False
    for i, j in keep:
        observed[i, j] = True
    return observed


class MatrixSampler:
    """Draws batches from a DataConfig on `device` with its own seeded generator.

    The generator's state is part of a training checkpoint, so a resumed run sees the same data.
    """

    def __init__(self, cfg: DataConfig, device: str | torch.device = "cpu", seed: int = 0):
        self.cfg = cfg
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device)

    def factors(self, batch_size: int, rows: int, rank: int) -> torch.Tensor:
        """[B, rows, rank] draws from the configured factor distribution."""
        c = self.cfg
        if c.distribution == "uniform":
            return c.min_val + (c.max_val - c.min_val) * self._rand(batch_size, rows, rank)
        if c.distribution == "gaussian":
            shape = (batch_size, rows, rank)
            return c.scale * torch.randn(shape, generator=self.generator, device=self.device)
        # Laplace(0, b) by inverting its CDF (torch.distributions takes no generator).
        u = self._rand(batch_size, rows, rank) - 0.5
        return -c.scale * torch.sign(u) * torch.log1p(-2 * u.abs())

    def needs_check(self, rank: int) -> bool:
        """Whether sampled values could leave the vocabulary (skipped checks save a host sync)."""
        c = self.cfg
        if c.distribution != "uniform":
            return True
        bound = rank * max(abs(c.min_val), abs(c.max_val)) ** 2
        return bound > min(-c.min_vocab, c.max_vocab)

    def pick_size(self) -> tuple[int, int]:
        """(m, n) for the next batch: fixed, or one square size of the mixture."""
        if not self.cfg.sizes:
            return self.cfg.m, self.cfg.n
        i = torch.randint(len(self.cfg.sizes), (1,), generator=self.generator, device=self.device)
        s = self.cfg.sizes[int(i.item())]
        return s, s

    def sample_values(self, batch_size: int, m: int, n: int, rank: int) -> torch.Tensor:
        """Un-rounded low-rank matrices [B, m, n]."""
        u = self.factors(batch_size, m, rank)
        v = self.factors(batch_size, n, rank)
        return u @ v.transpose(1, 2)

    def sample_observed(self, batch_size: int, m: int, n: int, p_mask: float) -> torch.Tensor:
        return self._rand(batch_size, m, n) >= p_mask

    def sample(
        self,
        batch_size: int,
        m: int | None = None,
        n: int | None = None,
        rank: int | None = None,
        p_mask: float | None = None,
        observed: torch.Tensor | None = None,
    ) -> Batch:
        """A fresh batch; m, n, rank or p_mask may be overridden (out-of-distribution tests).

        `observed` [m, n], if given, is the visibility of every matrix (a structured mask, see
        `structured_observed`) instead of a random one: it fixes m and n, and p_mask is unused.
        """
        if observed is not None:
            if p_mask is not None or (m, n) not in ((None, None), tuple(observed.shape)):
                raise ValueError("a fixed `observed` sets m and n and replaces p_mask")
            m, n = observed.shape
        elif m is None and n is None:
            m, n = self.pick_size()
        m, n = m or self.cfg.m, n or self.cfg.n
        rank = self.cfg.rank if rank is None else rank
        p_mask = self.cfg.p_mask if p_mask is None else p_mask
        values = self.sample_values(batch_size, m, n, rank)
        if observed is None:
            observed = self.sample_observed(batch_size, m, n, p_mask)
        else:
            observed = observed.to(values.device).expand(batch_size, m, n)
        return make_batch(values, observed, self.cfg, check=self.needs_check(rank))

    def sample_many(self, num_samples: int, batch_size: int, *args, **kwargs) -> list[Batch]:
        """`num_samples` fresh matrices in batches of `batch_size` (the last one holds the rest):
        what an analysis evaluates on. The other arguments are `sample`'s (m, n, rank, p_mask,
        observed), the same for every batch."""
        full, rest = divmod(num_samples, batch_size)
        sizes = [batch_size] * full + ([rest] if rest else [])
        return [self.sample(b, *args, **kwargs) for b in sizes]

    def sample_full_rank(self, batch_size: int, p_mask: float | None = None) -> Batch:
        """Matrices with i.i.d. Unif[min_val, max_val] entries (full rank): the copying test."""
        c = self.cfg
        p_mask = c.p_mask if p_mask is None else p_mask
        values = c.min_val + (c.max_val - c.min_val) * self._rand(batch_size, c.m, c.n)
        observed = self.sample_observed(batch_size, c.m, c.n, p_mask)
        return make_batch(values, observed, c)

    def sample_with_corrupted(self, batch_size: int) -> tuple[Batch, Batch]:
        """(clean X, corrupted −X with the same visibility): the activation-patching pair."""
        clean = self.sample(batch_size)
        return clean, corrupt(clean, self.cfg)


def corrupt(clean: Batch, cfg: DataConfig) -> Batch:
    """−X with the same visibility as `clean`."""
    values = -clean.target.reshape(-1, clean.m, clean.n)
    observed = clean.observed.reshape(-1, clean.m, clean.n)
    return make_batch(values, observed, cfg)
