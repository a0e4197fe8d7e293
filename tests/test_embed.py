import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT

import data
import embed
import utils
from model import evaluate, load_checkpoint
from utils import UserError

FILES = {
    "token_norm": ["token_norm.png", "token_norm.pdf", "token_norm.csv"],
    "token_pca": ["token_pca.png", "token_pca.pdf"],
    "pos_norm": ["pos_norm.png", "pos_norm.pdf", "pos_norm.csv"],
    "pos_tsne": ["pos_tsne_column.png", "pos_tsne_column.pdf", "pos_tsne_row.png"],
    "token_progress": ["token_progress.png", "token_progress.pdf"],
    "pos_progress": ["pos_progress_column.png", "pos_progress_row.pdf"],
    "permute": ["permute.png"],
}


def embed_config(out_dir, run, *overrides):
    return utils.load_config(
        embed.EmbedConfig,
        ROOT / "configs" / "embed.yaml",
        [
            f"ckpt.run={run}",
            "ckpt.steps=[10, 20]",
            "device=cpu",
            f"out_dir={out_dir}",
            "data.num_samples=48",
            "data.batch_size=32",
            "embed.num_permutations=2",
            *overrides,
        ],
    )


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif not isinstance(obj, str):
        yield obj


@pytest.mark.parametrize("exp_type", embed.EXP_TYPES)
def test_each_exp_type_writes_finite_outputs(tiny_run, tmp_path, exp_type):
    run, _ = tiny_run
    summary = embed.main(embed_config(tmp_path, run, f"exp_type={exp_type}"))
    out = tmp_path / exp_type
    for name in ["config.yaml", "summary.json", "table.md", *FILES[exp_type]]:
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    numbers = list(_numbers(summary))
    assert numbers and all(x is not None and math.isfinite(x) for x in numbers), summary
    if exp_type.endswith("progress"):
        assert [r["step"] for r in summary["steps"]] == [10, 20]


def test_value_tokens_are_the_tokenizers():
    values, ids = embed.value_tokens(data.DataConfig(), -1.5, 1.5)
    assert len(values) == 301 and ids[150] == 1001 and values[150] == 0.0
    back, observed = data.detokenize(torch.tensor(ids).view(1, -1), 1, len(ids))
    assert observed.all() and torch.allclose(back.view(-1).double(), torch.tensor(values))
    assert ids[values.tolist().index(0.44)] == 1045 and ids[values.tolist().index(-0.24)] == 977


def test_norm_symmetry_on_constructed_curves():
    values = np.arange(-150, 151) / 100
    sym = embed.norm_symmetry(values, 1 + values**2)
    assert sym["num_pairs"] == 150 and sym["norm_symmetry_corr"] == pytest.approx(1.0)
    assert sym["norm_symmetry_rel_diff"] == pytest.approx(0.0)
    skew = embed.norm_symmetry(values, 2 + values)
    assert skew["norm_symmetry_corr"] == pytest.approx(-1.0)
    assert skew["norm_symmetry_rel_diff"] > 0.3


def test_pcs_separate_magnitude_and_sign_when_the_embeddings_do():
    rng = np.random.default_rng(0)
    values = np.arange(-150, 151) / 100
    a, b = np.eye(16)[0], np.eye(16)[1]
    emb = 3 * np.abs(values)[:, None] * a + np.sign(values)[:, None] * b
    emb += 0.01 * rng.normal(size=emb.shape)
    sep = embed.pc_separation(embed.fit_pca(emb).transform(emb), values)
    assert max(sep["pc1_abs_corr_magnitude"], sep["pc2_abs_corr_magnitude"]) > 0.95
    assert max(sep["pc1_abs_corr_sign"], sep["pc2_abs_corr_sign"]) > 0.95


def test_silhouette_tells_columns_from_rows():
    rng = np.random.default_rng(0)
    m, n = 5, 5
    rows, cols = embed.grid_labels(m, n)
    assert (rows[7], cols[7]) == (1, 2)
    pos = np.eye(8)[cols] * 5 + 0.5 * rng.normal(size=(m * n, 8))
    coords, used = embed.tsne_2d(pos, 30.0, 0)
    assert coords.shape == (25, 2) and used == 24
    scores = embed.cluster_scores(pos, coords, m, n)
    assert scores["silhouette_column"] > 0.5 > scores["silhouette_row"]
    assert scores["silhouette_column_tsne"] > scores["silhouette_row_tsne"]


def test_permutation_is_undone_and_identity_changes_nothing(tiny_run):
    run, _ = tiny_run
    model, ckpt = load_checkpoint(run / "step_000020.pt")
    cfg = data.DataConfig(**ckpt["config"]["data"])
    batches = data.MatrixSampler(cfg, seed=0).sample_many(40, 16)
    weight = model.backbone.embeddings.position_embeddings.weight
    saved = weight.detach().clone()
    before = evaluate(model, batches)
    with embed.permuted_positions(model, torch.arange(16)):
        assert evaluate(model, batches) == before
    perm = torch.arange(16).roll(1)
    with embed.permuted_positions(model, perm):
        assert torch.equal(weight[:16], saved[perm]) and torch.equal(weight[16:], saved[16:])
    assert torch.equal(weight, saved)


def test_unknown_exp_type_is_one_line_listing_the_valid_ones(tmp_path, tiny_run):
    run, _ = tiny_run
    with pytest.raises(UserError, match="must be one of") as err:
        embed_config(tmp_path, run, "exp_type=bogus")
    assert "token_pca" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"unknown exp_type 'bogus' \(valid: token_norm, "):
        embed.EmbedConfig(exp_type="bogus")


def test_bad_inputs_are_clear_errors(tmp_path, tiny_run):
    run, _ = tiny_run
    with pytest.raises(UserError, match="vocabulary"):
        embed.main(embed_config(tmp_path, run, "embed.value_max=12.0"))
    with pytest.raises(UserError, match="value_min"):
        embed_config(tmp_path, run, "embed.value_min=2.0")
    with pytest.raises(UserError, match="ckpt.path names one file"):
        path = run / "step_000020.pt"
        embed.main(embed_config(tmp_path, run, "exp_type=pos_progress", f"ckpt.path={path}"))
    with pytest.raises(UserError, match="step_000015.pt not found"):
        embed.main(embed_config(tmp_path, run, "exp_type=token_progress", "ckpt.steps=[15]"))
