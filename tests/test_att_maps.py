import json
import math

import pytest
import torch
from conftest import ROOT

import att_maps
from data import Batch, DataConfig, MatrixSampler
from measures import SHARES, attention_shares, attention_summary, chance_shares
from model import load_checkpoint
from modeling_bert import act_name
from utils.config import UserError, load_config, resolve_path


def _cfg(tiny_run, tmp_path, *overrides):
    run, _ = tiny_run
    return load_config(
        att_maps.Config,
        ROOT / "configs" / "att_maps.yaml",
        [
            f"ckpt.run={run}",
            "ckpt.steps=[10, 20]",
            f"out_dir={tmp_path / 'out'}",
            "device=cpu",
            "data.num_samples=12",
            "data.batch_size=8",
            *overrides,
        ],
    )


def test_smoke_row_mask(tiny_run, tmp_path):
    cfg = _cfg(
        tiny_run,
        tmp_path,
        "att_maps.mask=row",
        "att_maps.hidden_lines=[1, 3]",
        "att_maps.keep_at=[0, 2]",
    )
    summary = att_maps.main(cfg)
    out = tmp_path / "out"
    for name in (
        "config.yaml",
        "summary.json",
        "heads.md",
        "att_maps_step000010.png",
        "att_maps_step000020.pdf",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert [c["step"] for c in saved["checkpoints"]] == [10, 20]
    assert saved["observed_pattern"][1] == [1, 0, 0, 0]
    for c in saved["checkpoints"]:
        assert len(c["heads"]) == 2 * 4
        for h in c["heads"]:
            assert all(math.isfinite(h[k]) for k in SHARES)
            assert h["observed"] + h["hidden"] == pytest.approx(1.0, abs=1e-5)
        assert set(c["authors_heads"]) == {"row_head", "col_head"}
        assert {h["role"] for h in c["heads"]} <= {"row", "column", "self", "other"}
        assert set(c["heads_by_role"]) == {"row", "column", "self"}
        pattern = torch.tensor(c["mean_pattern"])  # the figure's numbers
        assert pattern.shape == (2, 4, 16, 16)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 16), atol=1e-4, rtol=0)


def _pattern(m, n, rule):
    """[1, 1, T, T]: each query spreads its attention evenly over the keys `rule` allows."""
    t = m * n
    p = torch.zeros(t, t)
    for q in range(t):
        keys = [k for k in range(t) if rule(divmod(q, n), divmod(k, n), q == k)]
        p[q, keys] = 1 / len(keys)
    return p[None, None]


def test_shares_of_hand_built_patterns():
    m, n = 2, 3  # not square, so rows and columns cannot be confused
    observed = torch.tensor([[True, False, True, True, True, False]])
    same_row = _pattern(m, n, lambda a, b, me: a[0] == b[0] and not me)
    same_col = _pattern(m, n, lambda a, b, me: a[1] == b[1] and not me)
    itself = _pattern(m, n, lambda a, b, me: me)
    uniform = _pattern(m, n, lambda a, b, me: True)
    s = attention_shares(same_row, observed, m, n)
    assert (s["row"].item(), s["col"].item(), s["self"].item()) == pytest.approx((1, 0, 0))
    s = attention_shares(same_col, observed, m, n)
    assert (s["row"].item(), s["col"].item(), s["self"].item()) == pytest.approx((0, 1, 0))
    s = attention_shares(itself, observed, m, n)
    assert (s["self"].item(), s["observed"].item()) == pytest.approx((1, 4 / 6))
    s = attention_shares(uniform, observed, m, n)
    chance = chance_shares(m, n, 4 / 6)
    for k in SHARES:
        assert s[k].item() == pytest.approx(chance[k])


def test_structured_masks_follow_the_authors_example():
    section = att_maps.AttMapsSection(mask="row", hidden_lines=[3, 6], keep_at=[1, 5])
    row = att_maps.mask_pattern(section, 7, 7)
    assert row[3].tolist() == [j == 1 for j in range(7)]
    assert row[6].tolist() == [j == 5 for j in range(7)]
    assert int(row.sum()) == 49 - 2 * 6
    section.mask = "col"
    col = att_maps.mask_pattern(section, 7, 7)
    assert torch.equal(col, row.T)
    section.hidden_lines = [7]
    with pytest.raises(UserError, match="hidden_lines"):
        att_maps.mask_pattern(section, 7, 7)


def test_head_out_of_range_is_named(tiny_run, tmp_path):
    cfg = _cfg(tiny_run, tmp_path, "att_maps.row_head=[2, 0]")
    with pytest.raises(UserError, match="row_head.*layer 2"):
        att_maps.main(cfg)


def test_missing_checkpoint_says_how_to_make_it_and_writes_nothing(tiny_run, tmp_path):
    cfg = _cfg(tiny_run, tmp_path, "ckpt.steps=[10, 30]")
    with pytest.raises(UserError, match="step_000030.pt not found.*holds steps 10, 20"):
        att_maps.main(cfg)
    assert not (tmp_path / "out").exists()


def test_mean_pattern_averages_over_matrices(tiny_run):
    """Catches the mean pattern divided by the number of batches instead of matrices: its rows
    must sum to 1, and batches of 3, 5 and 1 matrices must give the mean over all 9 at once."""
    run, _ = tiny_run
    model, _ = load_checkpoint(run / "step_000020.pt")
    sampler = MatrixSampler(DataConfig(m=4, n=4, rank=1), seed=0)
    batches = [sampler.sample(b) for b in (3, 5, 1)]
    pattern = attention_summary(model, batches, mean_pattern=True)["pattern"]
    assert pattern.shape == (2, 4, 16, 16)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 16))
    ids, target, observed = (
        torch.cat([getattr(b, key) for b in batches]) for key in ("input_ids", "target", "observed")
    )
    whole = Batch(ids, target, observed, 4, 4)
    torch.testing.assert_close(
        attention_summary(model, [whole], mean_pattern=True)["pattern"], pattern
    )


def test_roles_follow_the_rule_on_a_forced_pattern(tiny_run):
    """Catches a role given from the wrong share (row for column) or to the wrong head: head 1
    of layer 0 forced to attend within rows, head 2 within columns, head 3 to itself."""
    run, _ = tiny_run
    model, _ = load_checkpoint(run / "step_000020.pt")
    m = n = 4
    forced = {
        1: _pattern(m, n, lambda a, b, me: a[0] == b[0] and not me),
        2: _pattern(m, n, lambda a, b, me: a[1] == b[1] and not me),
        3: _pattern(m, n, lambda a, b, me: me),
    }

    def force(p, hook):
        p = p.clone()
        for h, pat in forced.items():
            p[:, h] = pat[0, 0]
        return p

    batches = [MatrixSampler(DataConfig(m=m, n=n, rank=1), seed=0).sample(6)]
    with model.hooks([(act_name("pattern", 0), force)]):
        roles = attention_summary(model, batches)["roles"]
    assert roles[0][1:] == ["row", "column", "self"]


def test_structured_mask_defaults_follow_the_matrix_size():
    """Catches the authors' 7×7 rows (3, 6) applied to a smaller matrix, where they are out of
    range: null lines and kept entries scale with the size (7×7 gives the authors' example)."""
    section = att_maps.AttMapsSection(mask="row", hidden_lines=None, keep_at=None)
    seven = att_maps.mask_pattern(section, 7, 7)
    assert torch.equal(
        seven,
        att_maps.mask_pattern(
            att_maps.AttMapsSection(mask="row", hidden_lines=[3, 6], keep_at=[1, 5]), 7, 7
        ),
    )
    four = att_maps.mask_pattern(section, 4, 4)
    assert four[2].tolist() == [False, True, False, False]
    assert four[3].tolist() == [False, False, True, False]
    # keep_at null with other hidden rows keeps nothing (as --help says)
    other = att_maps.AttMapsSection(mask="row", hidden_lines=[0, 2], keep_at=None)
    assert not att_maps.mask_pattern(other, 5, 5)[[0, 2]].any()


def test_figures_redraw_from_the_summary(tiny_run, tmp_path):
    """Catches a figure whose numbers are not in summary.json: the grid is redrawn from it."""
    summary = att_maps.main(_cfg(tiny_run, tmp_path, "ckpt.steps=[20]"))
    out = tmp_path / "out"
    (out / "att_maps_step000020.png").unlink()
    written, notes = att_maps.draw_figures(json.loads((out / "summary.json").read_text()), out)
    assert (out / "att_maps_step000020.png").is_file() and not notes
    assert (
        summary["checkpoints"][0]["roles"]
        == json.loads((out / "summary.json").read_text())["checkpoints"][0]["roles"]
    )


def test_an_authors_head_outside_this_model_says_how_to_skip_it(tiny_run, tmp_path):
    """Catches the authors' default head index stopping a smaller model with no way out named:
    the 2-layer tiny model has no layer 2."""
    cfg = _cfg(tiny_run, tmp_path, "att_maps.col_head=[2, 1]")
    with pytest.raises(UserError, match=r"layer 2 outside 0\.\.1 .*att_maps\.col_head=\[\] skips"):
        att_maps.main(cfg)
    assert not resolve_path(cfg.out_dir).exists()


def _shares_grid(layers: int, heads: int) -> dict:
    """Shares [L, H] in which every cell is different: row = 10·layer + head, col = −that."""
    cells = torch.tensor([[10.0 * i + h for h in range(heads)] for i in range(layers)])
    return {"row": cells, "col": -cells, "self": cells / 100}


def test_the_authors_heads_and_the_head_table_read_the_right_cells():
    """Catches the authors' [layer, head] read as [head, layer] or the row head's numbers given
    for the column head, and the per-head table (heads.md, summary.json) out of order: on a
    2 × 4 grid whose cells all differ, each number must come from its own cell."""
    shares = _shares_grid(2, 4)
    shares.update(observed=shares["row"] / 1000, hidden=1 - shares["row"] / 1000)
    chance = chance_shares(2, 4, 0.7)  # 2×4 matrices: row and column chance differ
    claim = att_maps.claim_numbers(shares, chance, (1, 0), (0, 3))
    want = {"layer": 1, "head": 0, "row": 10.0, "col": -10.0}
    assert claim["row_head"] == {**want, "chance_row": 3 / 8, "chance_col": 1 / 8}
    assert (claim["col_head"]["row"], claim["col_head"]["col"]) == (3.0, -3.0)
    assert set(att_maps.claim_numbers(shares, chance, None, (0, 3))) == {"col_head"}
    roles = [["row", "other", "self", "other"], ["other", "column", "row", "other"]]
    rows = att_maps.head_rows(20, shares, roles)
    assert [(r["layer"], r["head"]) for r in rows] == [(i, h) for i in range(2) for h in range(4)]
    for r in rows:
        assert r["row"] == 10 * r["layer"] + r["head"] and r["role"] == roles[r["layer"]][r["head"]]
    assert att_maps.by_role(roles) == {
        "row": [[0, 0], [1, 2]],
        "column": [[1, 1]],
        "self": [[0, 2]],
    }


def test_shares_over_batches_weigh_every_matrix_the_same():
    """Catches shares averaged per batch (a batch of 1 matrix weighing as much as one of 5): the
    shares over batches of 3, 5 and 1 matrices must equal those over all 9 in one batch."""
    from model import MatrixBert
    from modeling_bert import BertConfig

    torch.manual_seed(0)
    sizes = {"hidden_size": 16, "intermediate_size": 16, "max_position_embeddings": 16}
    model = MatrixBert(BertConfig(num_hidden_layers=2, num_attention_heads=2, **sizes)).eval()
    with torch.no_grad():  # sharper patterns than at initialisation, so matrices differ
        for layer in model.backbone.encoder.layer:
            layer.attention.self.query.weight.mul_(40)
    sampler = MatrixSampler(DataConfig(m=3, n=3, rank=1), seed=0)
    batches = [sampler.sample(b) for b in (3, 5, 1)]
    ids, target, observed = (
        torch.cat([getattr(b, key) for b in batches]) for key in ("input_ids", "target", "observed")
    )
    whole = attention_summary(model, [Batch(ids, target, observed, 3, 3)])
    split = attention_summary(model, batches)
    for key in SHARES:
        torch.testing.assert_close(split["shares"][key], whole["shares"][key])
    assert split["losses"] == pytest.approx(whole["losses"])
    assert split["observed_fraction"] == pytest.approx(observed.float().mean().item())
