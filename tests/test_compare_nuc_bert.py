import importlib
import json
import math

import pytest
from conftest import ROOT

import compare_nuc_bert
from model import load_checkpoint
from utils.config import UserError, load_config


def _config(tiny_run, tmp_path, *overrides):
    run, _ = tiny_run
    return load_config(
        compare_nuc_bert.CompareConfig,
        ROOT / "configs" / "compare_nuc_bert.yaml",
        [
            f"ckpt.run={run}",
            f"out_dir={tmp_path / 'out'}",
            "device=cpu",
            "data.num_samples=16",
            "data.batch_size=8",
            "compare.p_masks=[0.2, 0.5]",
            *overrides,
        ],
    )


def test_smoke_writes_every_output(tiny_run, tmp_path):
    summary = compare_nuc_bert.main(_config(tiny_run, tmp_path))
    out = tmp_path / "out"
    for name in ("config.yaml", "summary.json", "table.md"):
        assert (out / name).is_file(), name
    for name in ("compare_nuc_bert.png", "compare_nuc_bert.pdf"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert [r["p_mask"] for r in saved["rows"]] == [0.2, 0.5]
    assert saved["num_problems"] == 32 and saved["unsolved"] == 0
    for row in saved["rows"]:
        assert all(math.isfinite(v) for v in row.values()), row
        assert row["nuc_loss_obs"] == 0.0  # the minimiser keeps the observed entries


def test_data_p_mask_is_refused(tiny_run, tmp_path):
    with pytest.raises(UserError, match="compare.p_masks"):
        _config(tiny_run, tmp_path, "data.p_mask=0.3")


def test_missing_checkpoint_says_how_to_make_it(tmp_path):
    cfg = load_config(
        compare_nuc_bert.CompareConfig,
        ROOT / "configs" / "compare_nuc_bert.yaml",
        [f"ckpt.run={tmp_path / 'nothing'}", "device=cpu"],
    )
    with pytest.raises(UserError, match="train.py"):
        compare_nuc_bert.main(cfg)


def test_figure_marks_the_training_p_mask_on_a_plain_norm_axis(tiny_run, tmp_path):
    """Bug: the nuclear-norm panel had a log axis over 3.5–4.5 whose ticks read "4×10⁰", and the
    training p_mask was not marked. Drawn from summary.json alone, both panels now carry a
    vertical line at the checkpoint's training p_mask with a legend entry, and the norm axis is
    linear with plain tick labels."""
    import matplotlib.pyplot as plt

    compare_nuc_bert.main(_config(tiny_run, tmp_path))
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    _, ckpt = load_checkpoint(tiny_run[0] / "step_000020.pt")
    assert saved["train_p_mask"] == ckpt["config"]["data"]["p_mask"] == 0.3
    fig = compare_nuc_bert.plot(saved)
    fig.canvas.draw()
    for ax in fig.axes:
        marks = [x for x in ax.get_lines() if x.get_label().startswith("training p_mask")]
        assert len(marks) == 1 and set(marks[0].get_xdata()) == {0.3}
        assert marks[0].get_label() in [t.get_text() for t in ax.get_legend().get_texts()]
    norm_ax = fig.axes[1]
    assert norm_ax.get_yscale() == "linear"
    assert not any("times" in t.get_text() for t in norm_ax.get_yticklabels())
    assert "step 20" in fig.get_suptitle()
    plt.close(fig)


def test_redraw_rebuilds_the_figure_from_summary_json(tiny_run, tmp_path):
    """Bug: a figure could only be redrawn by rerunning the solver on the checkpoint.
    scripts/redraw.py finds the script from config.yaml and redraws from summary.json alone;
    a summary from before `train_p_mask` was saved is drawn without the marker, and says so."""
    redraw = importlib.import_module("scripts.redraw").redraw
    compare_nuc_bert.main(_config(tiny_run, tmp_path))
    out = tmp_path / "out"
    (out / "compare_nuc_bert.png").unlink()
    script, written, notes = redraw(out)
    assert script == "compare_nuc_bert" and notes == []
    assert (out / "compare_nuc_bert.png").is_file() and out / "compare_nuc_bert.png" in written
    summary = json.loads((out / "summary.json").read_text())
    del summary["train_p_mask"]
    (out / "summary.json").write_text(json.dumps(summary))
    _, _, notes = redraw(out)
    assert len(notes) == 1 and "train_p_mask not saved" in notes[0]
