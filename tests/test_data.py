import pytest
import torch

import data
from data import DataConfig, MatrixSampler
from utils.config import UserError


def test_vocab_size_matches_paper():
    assert data.vocab_size(2, -10.0, 10.0) == 2002
    assert DataConfig().vocab_size == 2002


@pytest.mark.parametrize(
    "value, token", [(-0.24, 977), (0.00, 1001), (0.44, 1045), (-10.0, 1), (10.0, 2001)]
)
def test_worked_examples(value, token):
    ids = data.tokenize(torch.tensor([[value]]), torch.tensor([[True]]))
    assert ids.tolist() == [token]


def test_round_trip_over_whole_vocabulary():
    k = torch.arange(-1000, 1001)
    values = (k / 100.0).reshape(1, -1)
    observed = torch.ones_like(values, dtype=torch.bool)
    ids = data.tokenize(values, observed)
    assert ids.tolist() == list(range(1, 2002))
    back, obs = data.detokenize(ids, 1, values.shape[1])
    assert torch.equal(back, data.round_values(values, 2))
    assert obs.all()


def test_rounds_rather_than_truncates():
    # 0.29 * 100 = 28.999999... in float32; truncation would give 0.28's token.
    ids = data.tokenize(torch.tensor([[0.29]]), torch.tensor([[True]]))
    assert ids.item() == 1001 + 29


def test_mask_token_and_row_major():
    values = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    observed = torch.tensor([[True, False], [True, True]])
    assert data.tokenize(values, observed).tolist() == [1011, 0, 1031, 1041]


def test_out_of_vocabulary_is_an_error():
    with pytest.raises(UserError, match="outside the vocabulary"):
        data.tokenize(torch.tensor([[10.5]]), torch.tensor([[True]]))
    # a hidden out-of-range value never becomes a token, so it is fine
    assert data.tokenize(torch.tensor([[10.5]]), torch.tensor([[False]])).item() == 0


def test_sampler_rank_mask_fraction_and_ranges():
    cfg = DataConfig(m=7, n=7, rank=2, p_mask=0.3)
    batch = MatrixSampler(cfg, seed=0).sample(2000)
    x = batch.target.view(-1, 7, 7)
    # rank ≤ 2 up to the rounding to 2 decimals
    s = torch.linalg.svdvals(x)
    assert (s[:, 2] < 0.05).all()
    assert abs(batch.observed.float().mean().item() - 0.7) < 0.01
    assert x.abs().max() <= 2.0
    assert torch.equal(x, data.round_values(x, 2))
    assert ((batch.input_ids == 0) == ~batch.observed).all()
    # the target carries every entry, observed or hidden
    assert (x[~batch.observed.view(-1, 7, 7)] != 0).any()


def test_sampler_is_deterministic_under_a_seed():
    cfg = DataConfig()
    a = MatrixSampler(cfg, seed=3).sample(8)
    b = MatrixSampler(cfg, seed=3).sample(8)
    c = MatrixSampler(cfg, seed=4).sample(8)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.target, b.target)
    assert not torch.equal(a.target, c.target)


@pytest.mark.parametrize("dist", ["gaussian", "laplace"])
def test_other_factor_distributions(dist):
    cfg = DataConfig(distribution=dist, scale=0.5, rank=1, min_vocab=-100.0, max_vocab=100.0)
    batch = MatrixSampler(cfg, seed=0).sample(4000)
    u = MatrixSampler(cfg, seed=0).factors(20000, 1, 1)
    expected_var = 0.25 if dist == "gaussian" else 2 * 0.25
    assert abs(u.var().item() - expected_var) / expected_var < 0.05
    assert batch.target.shape == (4000, 49)


def test_mixture_of_sizes_draws_one_size_per_batch():
    cfg = DataConfig(rank=1, sizes=[5, 7, 9])
    sampler = MatrixSampler(cfg, seed=0)
    seen = {sampler.sample(2).input_ids.shape[1] for _ in range(30)}
    assert seen == {25, 49, 81}


def test_corrupted_copy_and_full_rank():
    cfg = DataConfig()
    sampler = MatrixSampler(cfg, seed=0)
    clean, corr = sampler.sample_with_corrupted(16)
    assert torch.equal(corr.target, -clean.target)
    assert torch.equal(corr.observed, clean.observed)
    full = sampler.sample_full_rank(64)
    ranks = torch.linalg.matrix_rank(full.target.view(-1, 7, 7))
    assert (ranks == 7).float().mean() > 0.9


def test_sample_many_splits_into_batches_like_sample():
    cfg = DataConfig(m=4, n=5, rank=1)
    batches = MatrixSampler(cfg, seed=1).sample_many(10, 4)
    assert [tuple(b.input_ids.shape) for b in batches] == [(4, 20), (4, 20), (2, 20)]
    one_by_one = MatrixSampler(cfg, seed=1)
    for b, size in zip(batches, (4, 4, 2)):
        expected = one_by_one.sample(size)
        assert torch.equal(b.input_ids, expected.input_ids)
        assert torch.equal(b.target, expected.target)
    again = MatrixSampler(cfg, seed=1).sample_many(10, 4)
    assert all(torch.equal(a.target, b.target) for a, b in zip(batches, again))
    assert [b.input_ids.shape[0] for b in MatrixSampler(cfg).sample_many(8, 4)] == [4, 4]
    wide = MatrixSampler(cfg).sample_many(3, 8, m=3, n=6, rank=2, p_mask=0.0)
    assert [tuple(b.input_ids.shape) for b in wide] == [(3, 18)] and wide[0].observed.all()


def test_sample_many_with_a_fixed_observed_pattern():
    cfg = DataConfig(m=4, n=5, rank=1)
    observed = data.structured_observed(4, 5, hidden_rows=[1], keep=[(1, 3)])
    fixed = MatrixSampler(cfg, seed=1).sample_many(6, 4, observed=observed)
    assert [b.input_ids.shape[0] for b in fixed] == [4, 2]
    for b in fixed:
        assert (b.observed == observed.flatten()).all()
        assert torch.equal(b.input_ids == 0, ~b.observed)
    # the values are drawn as for a random mask: the first batch's matrices are the same
    assert torch.equal(fixed[0].target, MatrixSampler(cfg, seed=1).sample(4).target)
    with pytest.raises(ValueError, match="fixed `observed`"):
        MatrixSampler(cfg).sample_many(4, 4, p_mask=0.5, observed=observed)
    with pytest.raises(ValueError, match="fixed `observed`"):
        MatrixSampler(cfg).sample_many(4, 4, m=5, n=4, observed=observed)


def test_structured_mask():
    obs = data.structured_observed(3, 3, hidden_rows=[0], keep=[(0, 2)])
    assert obs.tolist() == [[False, False, True], [True, True, True], [True, True, True]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"p_mask": 1.0}, "p_mask"),
        ({"p_mask": -0.1}, "p_mask"),
        ({"rank": 8}, "rank"),
    ],
)
def test_bad_data_config(kwargs, match):
    with pytest.raises(UserError, match=match):
        DataConfig(**kwargs)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_sampler_draws_the_configured_rank(rank):
    """Catches a sampler that ignores `data.rank` (rank 1 whatever the config or caller says):
    rank-r matrices have r singular values clearly above the rounding noise, and no more."""
    for sampler, kwargs in (
        (MatrixSampler(DataConfig(m=7, n=7, rank=rank), seed=0), {}),
        (MatrixSampler(DataConfig(m=7, n=7, rank=4), seed=0), {"rank": rank}),
    ):
        s = torch.linalg.svdvals(sampler.sample(500, **kwargs).target.view(-1, 7, 7))
        # σ_r > 0.05 on 500 of 500 today; rounding to 2 decimals leaves σ_{r+1} ≤ 0.016
        share = (s[:, rank - 1] > 0.05).float().mean().item()
        assert share > 0.95, f"rank {rank} {kwargs}: σ_{rank} > 0.05 on only {share:.0%}"
        assert (s[:, rank] < 0.05).all(), f"rank {rank} {kwargs}: σ_{rank + 1} ≥ 0.05"
