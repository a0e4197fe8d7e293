"""Redraw an analysis's figures in place from its summary.json alone (no checkpoint, no GPU).

    python3 scripts/redraw.py results/patch [more result folders ...]
    python3 scripts/redraw.py docs/results/h100_reproduce/embed/*

A result folder is what one run of an analysis script wrote: its resolved config.yaml and its
summary.json. Which script wrote it is read from config.yaml: every script's config has a
section of its own (`att_maps:`, `compare:` for compare_nuc_bert.py, `ablation:` for
uniform_ablation.py, `patch:`, `probe:`, `embed:` for embed.py, whose folders are one per
exp_type), and the folder
belongs to the one script in REDRAW whose keys config.yaml holds. Each script's
`draw_figures(summary, out_dir)` draws what its `main` draws, from the numbers it saved; for a
figure whose numbers a run did not save (a run from before they were saved) it says so, and the
figure on disk is left as it was.

To add a script: give it `draw_figures(summary: dict, out_dir: Path) -> (files written, notes on
figures not drawn or drawn without some of their numbers)` and add it to REDRAW with the
top-level config keys that only its config.yaml has.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import att_maps  # noqa: E402
import compare_nuc_bert  # noqa: E402
import embed  # noqa: E402
import patch  # noqa: E402
import probe  # noqa: E402
import uniform_ablation  # noqa: E402
import utils  # noqa: E402

Draw = Callable[[dict, Path], tuple[list[Path], list[str]]]


@dataclass(frozen=True)
class Redrawer:
    keys: tuple[str, ...]  # top-level keys of config.yaml that mark the script's folders
    draw: Draw


REDRAW: dict[str, Redrawer] = {
    "att_maps": Redrawer(("att_maps",), att_maps.draw_figures),
    "compare_nuc_bert": Redrawer(("compare",), compare_nuc_bert.draw_figures),
    "probe": Redrawer(("probe",), probe.draw_figures),
    "uniform_ablation": Redrawer(("ablation",), uniform_ablation.draw_figures),
    "patch": Redrawer(("patch",), patch.draw_figures),
    "embed": Redrawer(("embed", "exp_type"), embed.draw_figures),
}


def _read(path: Path, parse: Callable[[str], object], what: str) -> dict:
    if not path.is_file():
        raise utils.UserError(f"{path.parent} has no {path.name}: not a result folder")
    try:
        data = parse(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError):
        raise utils.UserError(f"{path} is not valid {what}") from None
    if not isinstance(data, dict):
        raise utils.UserError(f"{path} does not hold a mapping")
    return data


def detect(config: dict, where: Path) -> str:
    """The script that wrote a folder, from its config.yaml's top-level keys."""
    found = [name for name, r in REDRAW.items() if all(k in config for k in r.keys)]
    if len(found) != 1:
        known = ", ".join(f"{name} ({' + '.join(r.keys)})" for name, r in REDRAW.items())
        what = "no" if not found else f"several ({', '.join(found)})"
        raise utils.UserError(
            f"{where}/config.yaml matches {what} script(s) that can be redrawn; "
            f"known, by their config sections: {known}"
        )
    return found[0]


def redraw(folder: Path) -> tuple[str, list[Path], list[str]]:
    """Redraw one result folder: (script, files written, notes on figures not fully redrawn)."""
    folder = Path(folder)
    config = _read(folder / "config.yaml", yaml.safe_load, "YAML")
    summary = _read(folder / "summary.json", json.loads, "JSON")
    script = detect(config, folder)
    written, notes = REDRAW[script].draw(summary, folder)
    return script, written, notes


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
    utils.run_script(main)
