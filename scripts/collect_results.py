"""Gather every summary.json under a reproduce.sh output folder into one results.json.

    python3 -m scripts.collect_results results/reproduce

Keys are the folders relative to the output folder (`train`, `copy_check`, `embed/token_norm`,
...); values are their summary.json contents. Prints one line per stage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from utils.config import UserError
from utils.files import write_json


def collect(out: Path) -> dict:
    results = {}
    for path in sorted(out.rglob("summary.json")):
        key = path.parent.relative_to(out).as_posix()
        results[key] = json.loads(path.read_text())
    if not results:
        raise UserError(f"no summary.json under {out}")
    write_json(out / "results.json", results)
    return results


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python3 -m scripts.collect_results OUT_DIR")
    out = Path(sys.argv[1])
    try:
        keys = collect(out)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    print("\n".join(f"  {key}" for key in keys))
    print(f"written to {out / 'results.json'}")
