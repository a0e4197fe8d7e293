"""Gather every summary.json under a reproduce.sh output folder into one results.json.

    python3 -m scripts.collect_results results/reproduce

Keys are the folders relative to the output folder (`train`, `copy_check`, `embed/token_norm`,
...); values are their summary.json contents. Prints one line per stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from utils.config import UserError, resolve_path, run_script
from utils.files import write_json


def collect(out: Path) -> dict:
    if not out.is_dir():
        raise UserError(f"{out} is not a folder")
    results = {}
    for path in sorted(out.rglob("summary.json")):
        key = path.parent.relative_to(out).as_posix()
        try:
            results[key] = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path} is not valid JSON") from None
    if not results:
        raise UserError(f"no summary.json under {out}")
    write_json(out / "results.json", results)
    return results


def main(argv: list[str]) -> dict:
    if len(argv) != 1 or argv[0].startswith("-"):
        raise UserError("usage: python3 -m scripts.collect_results OUT_DIR")
    out = resolve_path(argv[0])
    results = collect(out)
    print("\n".join(f"  {key}" for key in results))
    print(f"written to {out / 'results.json'}")
    return results


if __name__ == "__main__":
    run_script(main)
