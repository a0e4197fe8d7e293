"""The measures of what the model does inside (measures.py), and the hidden-progress log that
records them during training (task.MatrixCompletion.measure_progress), on constructed cases with
known answers."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from measures import attention_shares, chance_shares, head_role, representation_collapse
from modeling_bert import act_name
from trainer import Trainer


def _vectors(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_collapse_of_hand_built_states():
    """Catches a collapse that keeps each position's cosine with itself (the diagonal), divides
    by T² instead of T(T − 1), drops the absolute value, or skips the normalisation: three
    positions holding e0, 2·e0 and e1 have |cos| 1 for one pair of the three, so the mean over
    ordered pairs is 2 / 6 = 1/3 (with the diagonal: 5/9; over T²: 2/9)."""
    third = _vectors([1, 0], [2, 0], [0, 1])[None]
    assert representation_collapse(third).item() == pytest.approx(1 / 3)
    # opposite directions count as the same line: |cos| = 1 for every pair (no |·|: −1/3)
    signs = _vectors([1, 0], [-3, 0], [0.5, 0])[None]
    assert representation_collapse(signs).item() == pytest.approx(1.0)
    # cos 1/2 between every pair: e0 + e_{t+1}, of equal norms
    half = torch.eye(6)[None, 1:] + torch.eye(6)[None, :1]
    assert representation_collapse(half).item() == pytest.approx(0.5)
    # the mean over matrices: a collapsed one (1) and an orthogonal one (0)
    both = torch.stack([torch.ones(4, 4), torch.eye(4)])
    assert representation_collapse(both).item() == pytest.approx(0.5)
    assert representation_collapse(torch.ones(2, 1, 4)).isnan()  # no pair of positions


def _spread(m: int, n: int, rule) -> torch.Tensor:
    """[T, T]: each query spreads its attention evenly over the keys `rule(q, k)` allows."""
    t = m * n
    p = torch.zeros(t, t)
    for q in range(t):
        keys = [k for k in range(t) if rule(divmod(q, n), divmod(k, n), q == k)]
        p[q, keys] = 1 / len(keys)
    return p


def _shares_by_loops(pattern: torch.Tensor, observed: torch.Tensor, m: int, n: int) -> dict:
    """attention_shares written out position by position: the reference."""
    b, h, t, _ = pattern.shape
    out = {k: torch.zeros(h) for k in ("row", "col", "self", "observed", "hidden")}
    for head in range(h):
        for i in range(b):
            for q in range(t):
                for k in range(t):
                    a = pattern[i, head, q, k].item()
                    if q == k:
                        out["self"][head] += a
                    elif q // n == k // n:
                        out["row"][head] += a
                    elif q % n == k % n:
                        out["col"][head] += a
                    out["observed" if observed[i, k] else "hidden"][head] += a
    return {key: v / (b * t) for key, v in out.items()}


def test_shares_per_head_and_matrix_match_a_position_by_position_count():
    """Catches shares averaged over the wrong axes (heads mixed up, one matrix's mask used for
    the whole batch, the query's visibility in place of the key's): three heads of different
    kinds on two matrices with different masks, against a plain loop over every query and key."""
    m, n = 2, 3
    row = _spread(m, n, lambda a, b, me: a[0] == b[0] and not me)
    col = _spread(m, n, lambda a, b, me: a[1] == b[1] and not me)
    g = torch.Generator().manual_seed(0)
    random = torch.randn(2, 6, 6, generator=g).softmax(-1)
    pattern = torch.stack([torch.stack([row, col, random[i]]) for i in range(2)])  # [2, 3, 6, 6]
    observed = torch.tensor([[True, False, True, True, True, False], [False] * 5 + [True]])
    got = attention_shares(pattern, observed, m, n)
    want = _shares_by_loops(pattern, observed, m, n)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=0)
    assert got["row"].tolist()[:2] == pytest.approx([1.0, 0.0])
    assert got["col"].tolist()[:2] == pytest.approx([0.0, 1.0])
    # matrix 1 shows entry 5 alone: of the row head's queries only 3 and 4 (its row-mates) see
    # it, with half their attention each
    one = attention_shares(pattern[1:], observed[1:], m, n)["observed"]
    assert one[0].item() == pytest.approx((0 + 0 + 0 + 0.5 + 0.5 + 0) / 6)


def test_chance_is_what_uniform_attention_scores():
    """Catches a chance level with rows and columns swapped: on a 2×5 matrix a query has 4
    row-mates and 1 column-mate."""
    chance = chance_shares(2, 5, 0.7)
    assert chance == pytest.approx(
        {"row": 4 / 10, "col": 1 / 10, "self": 1 / 10, "observed": 0.7, "hidden": 0.3}
    )


def test_a_role_needs_more_than_half():
    """Catches the role rule taken as ≥ one half (ROLE_RULE: more than half)."""
    assert head_role(0.5, 0.1, 0.1) == "other"
    assert head_role(0.51, 0.1, 0.1) == "row"
    assert head_role(0.1, 0.6, 0.1) == "column"
    assert head_role(0.1, 0.2, 0.7) == "self"


def _states(kind: str, b: int, t: int, d: int) -> torch.Tensor:
    """Hidden states [b, t, d] whose collapse is known: 'same' 1, 'orthogonal' 0, 'half' 1/2."""
    if kind == "same":
        return torch.ones(b, t, d)
    eye = torch.eye(d)
    if kind == "orthogonal":
        return eye[:t].expand(b, t, d).clone()
    return (eye[1 : t + 1] + eye[:1]).expand(b, t, d).clone()  # "half"


def test_progress_log_measures_each_layer_where_it_says(tmp_path):
    """Catches the `collapse` list measured on the wrong states (entry 0 must be the embedding
    output, entry i the output of layer i − 1, 0-based: not the layers' inputs, not shifted, not
    reversed) and the head shares stacked in the wrong layer or head order. The states and
    patterns are forced with hooks to values whose measures are known: collapse 1 after the
    embeddings, 0 after layer 0, 1/2 after layer 1; layer 0's heads attend within rows (head 3
    to itself), layer 1's within columns."""
    # 4×4 matrices, 2 layers of 4 heads, width 32; fp32, as bf16 would round the forced 1/3s
    cfg = tiny_config(tmp_path, "train.precision=fp32")
    trainer = Trainer(cfg)
    batch = trainer.task.progress_batch[0]
    b, t, d = batch.input_ids.shape[0], 16, cfg.model.hidden_size
    m, n = cfg.data.m, cfg.data.n
    forced = {
        act_name("embed"): _states("same", b, t, d),
        act_name("resid_post", 0): _states("orthogonal", b, t, d),
        act_name("resid_post", 1): _states("half", b, t, d),
    }
    row = _spread(m, n, lambda a, k, me: a[0] == k[0] and not me)
    col = _spread(m, n, lambda a, k, me: a[1] == k[1] and not me)
    layer0 = torch.stack([row, row, row, torch.eye(t)])  # [H, T, T]
    layer1 = torch.stack([col] * 4)
    forced[act_name("pattern", 0)] = layer0.expand(b, -1, -1, -1)
    forced[act_name("pattern", 1)] = layer1.expand(b, -1, -1, -1)
    hooks = [(name, lambda x, hook, v=v: v.to(x.dtype)) for name, v in forced.items()]
    with trainer.model.hooks(hooks):
        got = trainer.task.measure_progress()
    assert got["collapse"].tolist() == pytest.approx([1.0, 0.0, 0.5], abs=1e-6)
    want = {
        "att_row": [[1, 1, 1, 0], [0, 0, 0, 0]],
        "att_col": [[0, 0, 0, 0], [1, 1, 1, 1]],
        "att_self": [[0, 0, 0, 1], [0, 0, 0, 0]],
    }
    for key, value in want.items():
        torch.testing.assert_close(
            got[key], torch.tensor(value, dtype=torch.float32), atol=1e-6, rtol=0
        )
