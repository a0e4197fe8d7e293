"""Redraw an analysis's figures in place from its summary.json alone (no checkpoint, no GPU).

    python3 -m scripts.redraw results/patch [more result folders ...]
    python3 -m scripts.redraw docs/results/h100_reproduce/embed/*

A result folder is what one run of an analysis script wrote: its resolved config.yaml and its
summary.json. Which script wrote it is read from config.yaml: every script's config has a
section of its own (`att_maps:`, `compare:` for compare_nuc_bert.py, `ablation:` for
uniform_ablation.py, `patch:`, `probe:`, `embed:` for embed.py, whose folders are one per
exp_type), and the folder
belongs to the one script in REDRAW whose keys config.yaml holds. That script, run as
`python3 SCRIPT.py --redraw FOLDER` (utils.config.cli), calls its own `draw_figures(summary,
out_dir)`, which draws what its `main` draws from the numbers it saved; for a figure whose
numbers a run did not save (a run from before they were saved) it says so, and the figure on
disk is left as it was. The script runs in a process of its own: no module imports a script.

To add a script: give it `draw_figures(summary: dict, out_dir: Path) -> (files written, notes on
figures not drawn or drawn without some of their numbers)`, pass it to `cli(..., redraw=...)`,
and add the script to REDRAW with the top-level config keys that only its config.yaml has.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from utils.config import REPO_ROOT, UserError, run_script

# script -> the top-level keys of config.yaml that mark its folders
REDRAW: dict[str, tuple[str, ...]] = {
    "att_maps": ("att_maps",),
    "compare_nuc_bert": ("compare",),
    "probe": ("probe",),
    "uniform_ablation": ("ablation",),
    "patch": ("patch",),
    "embed": ("embed", "exp_type"),
}


def _read(path: Path, parse: Callable[[str], object], what: str) -> dict:
    if not path.is_file():
        raise UserError(f"{path.parent} has no {path.name}: not a result folder")
    try:
        data = parse(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError):
        raise UserError(f"{path} is not valid {what}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a mapping")
    return data


def detect(config: dict, where: Path) -> str:
    """The script that wrote a folder, from its config.yaml's top-level keys."""
    found = [name for name, keys in REDRAW.items() if all(k in config for k in keys)]
    if len(found) != 1:
        known = ", ".join(f"{name} ({' + '.join(keys)})" for name, keys in REDRAW.items())
        what = "no" if not found else f"several ({', '.join(found)})"
        raise UserError(
            f"{where}/config.yaml matches {what} script(s) that can be redrawn; "
            f"known, by their config sections: {known}"
        )
    return found[0]


def redraw(folder: Path) -> tuple[str, list[Path], list[str]]:
    """Redraw one result folder: (script, files written, notes on figures not fully redrawn)."""
    folder = Path(folder)
    config = _read(folder / "config.yaml", yaml.safe_load, "YAML")
    summary = _read(folder / "summary.json", json.loads, "JSON")
    del summary  # read only to refuse a folder without a valid one before starting a process
    script = detect(config, folder)
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / f"{script}.py"), "--redraw", str(folder.resolve())],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"{script}.py --redraw {folder} failed: {last.removeprefix('error: ')}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return script, [Path(p) for p in result["written"]], result["notes"]


def main(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    for arg in args:
        script, written, notes = redraw(Path(arg))
        names = ", ".join(p.name for p in written) or "nothing"
        print(f"{arg} ({script}): redrew {names}")
        for note in notes:
            print(f"  not redrawn / incomplete: {note}")


if __name__ == "__main__":
    run_script(main)
