"""Every analysis script checks its input before it writes anything: a shape the model cannot
take is a one-line error, and a previous run's output folder is left as it was."""

import importlib
import typing
from pathlib import Path

import pytest

from utils.config import UserError, load_config

ROOT = Path(__file__).resolve().parents[1]

ONE = ["ckpt.step=20"]
TWO = ["ckpt.steps=[10, 20]"]
SCRIPTS = {
    "att_maps": TWO,
    "compare_nuc_bert": ONE,
    "copy_check": TWO,
    "embed": TWO,
    "ood": ONE,
    "patch": ONE,
    "probe": ONE,
    "switch_models": ["ckpt.pre_step=10", "ckpt.post_step=20"],
    "uniform_ablation": [*ONE, "ablation.heads=[[0, 0]]"],
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_too_many_positions_is_refused_before_writing(name, tiny_run, tmp_path):
    run, _ = tiny_run
    module = importlib.import_module(name)
    out = tmp_path / "out"
    cfg = load_config(
        typing.get_type_hints(module.main)["cfg"],
        ROOT / "configs" / f"{name}.yaml",
        [f"ckpt.run={run}", *SCRIPTS[name], f"out_dir={out}", "device=cpu"]
        + ["data.m=30", "data.n=30"],  # 900 positions; the tiny model has 64
    )
    previous = out / getattr(cfg, "exp_type", "") / "config.yaml"
    previous.parent.mkdir(parents=True)
    previous.write_text("a previous run's config\n")
    with pytest.raises(UserError, match="position"):
        module.main(cfg)
    assert previous.read_text() == "a previous run's config\n"
    assert [p.name for p in previous.parent.iterdir()] == ["config.yaml"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_the_default_output_folder_is_named_after_the_run(name, tmp_path):
    """Catches an analysis whose default output folder ignores the run (analysing a second run
    would land in the first one's folder): results/<run folder name>/<script>."""
    module = importlib.import_module(name)
    schema = typing.get_type_hints(module.main)["cfg"]
    cfg = load_config(schema, ROOT / "configs" / f"{name}.yaml", ["ckpt.run=runs/seed_7"])
    assert cfg.out_dir == f"results/seed_7/{name}"
    if name == "copy_check":  # files named instead of a run: their folder's name
        files = load_config(schema, ROOT / "configs/copy_check.yaml", ["ckpt.paths=[a/b.pt]"])
        assert files.out_dir == "results/a/copy_check"


def test_a_folder_with_another_runs_results_is_refused(tiny_run, tmp_path):
    """Catches a second run's analysis written over the first one's figures: the folder whose
    config.yaml names another run is refused with one line and left as it was; the same run's
    results are replaced."""
    import copy_check

    run, _ = tiny_run
    out = tmp_path / "out"

    def analyse(source):
        cfg = load_config(
            copy_check.CopyCheckConfig,
            ROOT / "configs/copy_check.yaml",
            [f"ckpt.run={source}", "ckpt.steps=[20]", f"out_dir={out}", "device=cpu"]
            + ["data.num_samples=16"],
        )
        return copy_check.main(cfg)

    analyse(run)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    analyse(run)  # the same run again: fine
    other = tmp_path / "other"
    other.symlink_to(run, target_is_directory=True)
    with pytest.raises(UserError, match="holds results of another run") as err:
        analyse(other)
    assert "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()}.keys() == before.keys()
    assert (out / "config.yaml").read_bytes() == before["config.yaml"]
