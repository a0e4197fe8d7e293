import importlib
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

import patch
from data import DataConfig, MatrixSampler
from model import load_checkpoint
from modeling_bert import act_name, patch_hooks, patch_z_hooks
from utils.config import UserError, load_config, resolve_path


def _cfg(tiny_run, tmp_path, *overrides):
    run, _ = tiny_run
    return load_config(
        patch.Config,
        ROOT / "configs" / "patch.yaml",
        [
            f"ckpt.run={run}",
            "ckpt.step=20",
            f"out_dir={tmp_path / 'out'}",
            "device=cpu",
            "data.num_samples=8",
            "data.batch_size=8",
            *overrides,
        ],
    )


def test_smoke(tiny_run, tmp_path):
    # The tiny model only copies, so the gap to restore is at observed entries.
    summary = patch.main(_cfg(tiny_run, tmp_path, "patch.sweep_entries=observed"))
    out = tmp_path / "out"
    for name in (
        "config.yaml",
        "summary.json",
        "patch.md",
        "patch_heads.png",
        "patch_positions.png",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["patched"]["layers"] == [1]  # layers: [-1] is the last of 2
    for run in saved["runs"].values():
        assert all(math.isfinite(run[k]) for k in ("x_observed", "x_hidden", "neg_x_hidden"))
    assert len(saved["head_sweep"]) == 2 and len(saved["head_sweep"][0]) == 4
    assert len(saved["position_sweep"][0]) == 16
    assert all(math.isfinite(v) for row in saved["position_sweep"] for v in row)


def test_what_patching_restores(tiny_run):
    """Patching nothing gives the corrupted output; the embedding output plus z everywhere, or a
    layer's whole input, gives the clean one; z at every layer alone does not (the residual
    stream still carries the corrupted tokens)."""
    run, _ = tiny_run
    model, _ = load_checkpoint(run / "step_000020.pt")
    pairs = [MatrixSampler(DataConfig(m=4, n=4, rank=1), seed=3).sample_with_corrupted(8)]
    layers = list(range(model.config.num_hidden_layers))
    interventions = {
        "nothing": lambda cache: [],
        "embed_and_z": lambda cache: (
            patch_hooks(cache, [act_name("embed")]) + patch_z_hooks(cache, layers)
        ),
        "input_of_layer_1": lambda cache: patch_hooks(cache, [act_name("resid_pre", 1)]),
        "z_everywhere": lambda cache: patch_z_hooks(cache, layers),
    }
    preds = patch.patched_predictions(model, pairs, interventions)
    assert torch.equal(preds["nothing"], preds["corrupted"])
    torch.testing.assert_close(preds["embed_and_z"], preds["clean"], atol=1e-6, rtol=0)
    torch.testing.assert_close(preds["input_of_layer_1"], preds["clean"], atol=1e-6, rtol=0)
    assert (preds["z_everywhere"] - preds["clean"]).abs().max() > 1e-3
    rows = patch.score(preds, pairs[0][0].target, pairs[0][0].observed)
    assert rows["nothing"]["restored_observed"] == pytest.approx(0.0, abs=1e-6)
    assert rows["embed_and_z"]["restored_observed"] == pytest.approx(1.0, abs=1e-4)


def test_restored_fraction():
    assert patch.restored_fraction(1.0, 0.25, 0.0) == pytest.approx(0.75)
    assert patch.restored_fraction(1.0, 1.5, 0.5) == pytest.approx(-1.0)
    assert patch.restored_fraction(1.0, 0.5, 0.999) is None  # no gap to restore


def test_bad_indices_are_named(tiny_run, tmp_path):
    with pytest.raises(UserError, match="patch.heads.*4"):
        patch.main(_cfg(tiny_run, tmp_path, "patch.heads=[4]"))
    with pytest.raises(UserError, match="patch.layers.*-3"):
        patch.main(_cfg(tiny_run, tmp_path, "patch.layers=[-3]"))


def test_sweep_figure_before_the_drop_says_why_it_is_empty():
    """Bug: on a pre-drop checkpoint every share restored is None (the clean run does not beat the
    corrupted one) and the heatmaps came out blank with nothing saying why. The figure now carries
    the n/a text."""
    import matplotlib.pyplot as plt

    fig = patch.plot_sweep([[None] * 4] * 2, "head (1-based)", 1, "step 10", "hidden")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any(patch.NOT_APPLICABLE in t for t in texts), texts
    assert patch.NOT_APPLICABLE == "n/a: the clean run does not beat the corrupted one"
    plt.close(fig)


def test_sweep_colour_scale_follows_the_data_with_0_white():
    """Bug: after the drop the shares are small (≤ 0.1) and the fixed ±1 colour scale washed them
    out. The scale is now ±(the largest |share|), symmetric so that 0 stays white, and the colour
    bar's label says so."""
    import matplotlib.pyplot as plt

    grid = [[0.01, -0.02, 0.05, None], [0.0, 0.08, -0.01, 0.03]]
    fig = patch.plot_sweep(grid, "head (1-based)", 1, "step 20", "hidden")
    im = fig.axes[0].images[0]
    assert (im.norm.vmin, im.norm.vmax) == pytest.approx((-0.08, 0.08))
    assert im.cmap(im.norm(0.0))[:3] == pytest.approx((0.97, 0.97, 0.97), abs=0.03)
    assert "0.08" in fig.axes[1].get_ylabel() and "largest" in fig.axes[1].get_ylabel()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["1", "2"]
    plt.close(fig)


def test_redraw_rebuilds_both_sweeps_from_summary_json(tiny_run, tmp_path):
    """Bug: the sweep figures could only be redrawn by rerunning the model. scripts/redraw.py
    finds the script from config.yaml and redraws them from summary.json alone, with the n/a text
    where the run had no gap to restore (the tiny model only copies: none at hidden entries)."""
    redraw = importlib.import_module("scripts.redraw").redraw
    patch.main(_cfg(tiny_run, tmp_path))
    out = tmp_path / "out"
    saved = json.loads((out / "summary.json").read_text())
    assert all(v is None for row in saved["head_sweep"] for v in row)
    assert (saved["m"], saved["n"]) == (4, 4)
    for name in ("patch_heads.png", "patch_positions.png"):
        (out / name).unlink()
    script, written, notes = redraw(out)
    assert script == "patch" and notes == []
    assert sorted(p.name for p in written) == ["patch_heads.png", "patch_positions.png"]


def test_redraw_refuses_a_folder_it_cannot_place(tmp_path):
    """scripts/redraw.py on a folder that is not an analysis's output, or whose config.yaml is no
    script's it knows, stops with one line that says why (and exit code 2 from the shell)."""
    redraw = importlib.import_module("scripts.redraw").redraw
    with pytest.raises(UserError, match="no config.yaml"):
        redraw(tmp_path)
    (tmp_path / "config.yaml").write_text("seed: 0\nswitch: {}\n")
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="matches no script.*patch \\(patch\\)"):
        redraw(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.redraw", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "script",
    [
        "att_maps",
        "compare_nuc_bert",
        "uniform_ablation",
        "patch",
        "embed",
        "probe",
        "switch_models",
    ],
)
def test_redraw_tells_the_scripts_apart_by_their_configs(script):
    """Each script's own config file maps to it, and no other script's config maps to any of the
    registered ones (the config sections that mark a folder are unique)."""
    import yaml

    registry = vars(importlib.import_module("scripts.redraw"))
    config = yaml.safe_load((ROOT / "configs" / f"{script}.yaml").read_text())
    if script in registry["REDRAW"]:
        assert registry["detect"](config, ROOT) == script
    else:
        with pytest.raises(UserError, match="matches no script"):
            registry["detect"](config, ROOT)


def test_heads_by_role_patch_only_those_heads(tiny_run, tmp_path, monkeypatch):
    """Catches a role resolved outside patch.layers, or patched at every head of a layer: with
    one row head in layer 1, the main patch equals patching that (layer, head) alone."""
    import analysis as analysis_module

    real = analysis_module.attention_summary
    roles = [["row", "other", "other", "other"], ["other", "row", "other", "other"]]
    monkeypatch.setattr(
        analysis_module,
        "attention_summary",
        lambda m, b, mean_pattern=False: {**real(m, b), "roles": roles},
    )
    summary = patch.main(_cfg(tiny_run, tmp_path, "patch.heads=row", "patch.layers=[1]"))
    assert summary["patched"]["pairs"] == [[1, 1]]
    single = summary["runs"]["patched"]["x_hidden"]
    alone = patch.main(
        _cfg(
            tiny_run,
            tmp_path,
            "patch.heads=[1]",
            "patch.layers=[1]",
            "out_dir=" + str(tmp_path / "b"),
        )
    )
    assert single == alone["runs"]["patched"]["x_hidden"]


def test_a_role_without_heads_in_the_layers_is_an_error(tiny_run, tmp_path, monkeypatch):
    """Catches a role with no heads in patch.layers reported as a patch that changed nothing
    (the 'patched' row equal to the 'corrupted' one), and an output folder written first."""
    import analysis as analysis_module

    real = analysis_module.attention_summary
    roles = [["row", "other", "other", "other"], ["other"] * 4]
    monkeypatch.setattr(
        analysis_module,
        "attention_summary",
        lambda m, b, mean_pattern=False: {**real(m, b), "roles": roles},
    )
    cfg = _cfg(tiny_run, tmp_path, "patch.heads=row", "patch.layers=[1]")
    with pytest.raises(UserError, match=r"'patch.heads' = 'row': none in 'patch.layers' \[1\]"):
        patch.main(cfg)
    assert not resolve_path(cfg.out_dir).exists()


def _patched_cells(hooks, layers=2, heads=4, t=6):
    """Which (layer, head, position) cells z hooks replace, for hooks made from a cache of ones
    (the clean z): the corrupted run's z is 0, so a cell is patched where the hooked z reads 1."""
    by_name = dict(hooks)
    assert len(by_name) == len(hooks)  # one hook per layer
    cells = set()
    for i in range(layers):
        name = act_name("z", i)
        if name not in by_name:
            continue
        point = type("Hook", (), {"name": name})()
        z = by_name[name](torch.zeros(1, t, heads, 2), point)
        for pos, head in (z[0, :, :, 0] == 1).nonzero().tolist():
            cells.add((i, head, pos))
    return cells


def test_the_main_patch_by_role_patches_each_layers_own_heads():
    """Catches a role's heads patched in every chosen layer (layer 0's head 2 patched in layer 1
    too), all heads of a layer patched, or the positions ignored: row heads (0, 2), (1, 1) and
    column head (1, 3), positions 1 and 4 of 6, must patch exactly those 3 × 2 cells."""
    chosen = {"layers": [0, 1], "heads": "row+column", "pairs": [[0, 2], [1, 1], [1, 3]]}
    chosen["positions"] = [1, 4]
    cache = {act_name("z", i): torch.ones(1, 6, 4, 2) for i in range(2)}
    cells = _patched_cells(patch.main_patch_hooks(cache, chosen))
    assert cells == {(i, h, p) for i, h in [(0, 2), (1, 1), (1, 3)] for p in (1, 4)}
    everywhere = dict(chosen, positions=None)
    cells = _patched_cells(patch.main_patch_hooks(cache, everywhere))
    assert cells == {(i, h, p) for i, h in [(0, 2), (1, 1), (1, 3)] for p in range(6)}
    # heads by index: those heads in every chosen layer
    by_index = {"layers": [1], "heads": [0, 3], "positions": None}
    cells = _patched_cells(patch.main_patch_hooks(cache, by_index))
    assert cells == {(1, h, p) for h in (0, 3) for p in range(6)}


def test_heads_named_by_role_are_kept_within_the_chosen_layers(monkeypatch):
    """Catches the role's heads taken from every layer rather than `patch.layers` (here −1, the
    last of 3), or the wrong role: rows (0, 0), (1, 2), (2, 1) and a column head (2, 3)."""
    import analysis as analysis_module
    from model import MatrixBert
    from modeling_bert import BertConfig

    roles = [["row", "other", "other", "other"], ["other", "other", "row", "other"]]
    roles.append(["other", "row", "other", "column"])
    monkeypatch.setattr(analysis_module, "attention_summary", lambda m, b: {"roles": roles})
    sizes = {"hidden_size": 8, "intermediate_size": 8, "max_position_embeddings": 16}
    model = MatrixBert(
        BertConfig(vocab_size=10, num_hidden_layers=3, num_attention_heads=4, **sizes)
    )
    section = patch.PatchSection(layers=[-1], heads="row")
    chosen = patch.chosen_patch(section, model, 9, [])
    assert chosen["layers"] == [2] and chosen["pairs"] == [[2, 1]]
    section = patch.PatchSection(layers=[0, 2], heads="row+column", positions=[-1])
    chosen = patch.chosen_patch(section, model, 9, [])
    assert chosen["pairs"] == [[0, 0], [2, 1], [2, 3]] and chosen["positions"] == [8]
    section = patch.PatchSection(layers=None, heads="column")
    assert patch.chosen_patch(section, model, 9, [])["pairs"] == [[2, 3]]


def test_score_on_runs_whose_answers_are_known():
    """Catches the table's columns mixed up (against X vs against −X, observed vs hidden) or the
    share restored measured against the wrong runs: the clean run answers X, the corrupted −X,
    and a patched run 0, so with a = mean X² over those entries its losses are a, a and its
    share restored is (4a − a) / (4a − 0) = 3/4; the sweeps' grids read [layer][index]."""
    target = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    observed = torch.tensor([[True, False, True, False]])
    preds = {"clean": target, "corrupted": -target, "patched": torch.zeros_like(target)}
    rows = patch.score(preds, target, observed)
    a_obs, a_hid = (1 + 0.25) / 2, (4 + 9) / 2

    def row(x, neg_x, restored):  # (observed, hidden) pairs
        out = {"x_observed": x[0], "x_hidden": x[1], "neg_x_observed": neg_x[0]}
        out.update(neg_x_hidden=neg_x[1], restored_observed=restored, restored_hidden=restored)
        return out

    assert rows["clean"] == pytest.approx(row((0, 0), (4 * a_obs, 4 * a_hid), 1))
    assert rows["corrupted"] == pytest.approx(row((4 * a_obs, 4 * a_hid), (0, 0), 0))
    assert rows["patched"] == pytest.approx(row((a_obs, a_hid), (a_obs, a_hid), 0.75))
    cells = {f"head {i} {h}": {"restored_hidden": 10.0 * i + h} for i in range(2) for h in range(3)}
    grid = patch.sweep_grid(cells, "head", (2, 3), "hidden")
    assert grid == [[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]]
    assert patch.best_cell(grid) == (12.0, 1, 2)
    assert patch.best_cell([[None, -0.5], [0.25, None]]) == (0.25, 1, 0)
