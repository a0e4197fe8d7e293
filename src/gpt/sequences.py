"""The GPT variant's sequences: the masked matrix, a separator, then the full matrix.

Tokens are `data.tokenize`'s, with the vocabulary cut to [−2, 2] (`min_vocab` −2, `max_vocab` 2,
`prec` 2), which holds every entry of a rank-2 matrix with Unif[−1, 1] factors (|x| ≤ r = 2):

    MASK (hidden entry)  -> 0
    value v              -> 1 + round(100·v) + 200:  −2.00 -> 1,  −0.24 -> 177,  0.00 -> 201,
                                                      0.44 -> 245,  2.00 -> 401
    separator (SEP)      -> 404: three above the last value id, as in the authors' code (ids
                            402 and 403 never occur), so the vocabulary holds 405 ids

An m×n matrix (T = m·n entries, row-major) becomes 2T + 1 tokens (99 for 7×7):

    position   0 .. T−1          T      T+1 .. 2T
               masked matrix     SEP    full matrix (every entry)

Worked example, X = [[0.44, −0.24], [0.00, 1.50]] with entry (0, 1) hidden:

    [245, 0, 201, 351, 404, 245, 177, 201, 351]

The model reads positions 0 .. 2T−1 and predicts positions 1 .. 2T (next-token cross-entropy over
all of them, as the authors do). At evaluation it is given the T + 1 prompt tokens (masked matrix
and SEP) and generates the T tokens of the completion, one entry at a time.
"""

from __future__ import annotations

import torch

from data import DataConfig, detokenize, tokenize
from data import vocab_size as value_vocab_size


def sep_token_id(cfg: DataConfig) -> int:
    """The separator's id: 404 for prec 2 and values in [−2, 2]."""
    return value_vocab_size(cfg.prec, cfg.min_vocab, cfg.max_vocab) + 2


def vocab_size(cfg: DataConfig) -> int:
    """Ids the model embeds and predicts: MASK, the values, two unused ids, SEP (405)."""
    return sep_token_id(cfg) + 1


def value_id_range(cfg: DataConfig) -> tuple[int, int]:
    """(first, last) id of a value token, both inclusive: (1, 401)."""
    return 1, value_vocab_size(cfg.prec, cfg.min_vocab, cfg.max_vocab) - 1


def context_length(cfg: DataConfig) -> int:
    """Tokens in the longest sequence the data makes: 2T + 1 (99 for 7×7)."""
    return 2 * cfg.max_tokens + 1


def build_sequences(
    input_ids: torch.Tensor, target: torch.Tensor, cfg: DataConfig, check: bool = False
) -> torch.Tensor:
    """[B, 2T + 1] sequences from a `data.Batch`'s `input_ids` [B, T] and `target` [B, T].

    `input_ids` already is the masked matrix (MASK where hidden); the full matrix is tokenised
    again with nothing hidden. `check` makes a value outside the vocabulary an error (one host
    sync); the sampler's distributions that cannot leave it need no check.
    """
    rows = target.unsqueeze(-2)  # [B, 1, T]: tokenize flattens a 1×T matrix to the same order
    full = tokenize(
        rows, torch.ones_like(rows, dtype=torch.bool), cfg.prec, cfg.min_vocab, cfg.max_vocab, check
    )
    sep = torch.full_like(input_ids[:, :1], sep_token_id(cfg))
    return torch.cat([input_ids, sep, full], dim=1)


def decode(ids: torch.Tensor, m: int, n: int, cfg: DataConfig) -> torch.Tensor:
    """Values [B, m, n] of generated value tokens [B, m·n] (a MASK id would decode to 0)."""
    return detokenize(ids, m, n, cfg.prec, cfg.min_vocab)[0]
