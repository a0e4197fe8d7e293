"""notebooks/tour.ipynb, the page researchers open first: it runs top to bottom in a fresh kernel
on the shipped checkpoints, the checks it prints hold, it imports only the shared modules, and the
committed copy carries its outputs (so it reads on a code host) without machine paths.

The notebook runs once, in one test (under `pytest -n auto` a module-scoped fixture would run it
once per worker that gets one of its tests)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_layout import ROOMS, SHARED

NOTEBOOK = ROOT / "notebooks" / "tour.ipynb"
# The checks the tour prints ("check NAME: what: ok"), one per section's claim.
CHECKS = {
    "detokenize",
    "drop",
    "completes",
    "roles",
    "copying",
    "patch",
    "torch hook",
    "probe",
    "nuclear norm",
    "HF",
}
CHECK_LINE = re.compile(r"^check (?P<name>[^:]+): (?P<detail>.*): (?P<verdict>ok|FAILED)$", re.M)
HF_DIFF = re.compile(r"max \|difference\| (?P<diff>\S+) < 1e-05")


def _text(cell) -> str:
    """Everything a code cell printed (streams and text results)."""
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
        elif out["output_type"] == "error":
            parts.append("\n".join(out["traceback"]))
    return "".join(parts)


def _checks(nb) -> dict[str, str]:
    """{check name: its printed line} over the notebook's outputs."""
    found = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            for match in CHECK_LINE.finditer(_text(cell)):
                found[match["name"]] = match.group(0)
    return found


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _kernel_path(folder: Path) -> Path:
    """A folder holding a `python3` kernelspec that runs this interpreter (the venv's, with
    ipykernel from requirements-dev.txt), for JUPYTER_PATH, which is searched first: a user's own
    `python3` kernel pointing at another Python (without torch) is never picked instead, and the
    venv is left as installed."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3 (tests)", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return folder


def test_the_tour_runs_top_to_bottom_in_a_fresh_kernel_and_its_checks_hold(tmp_path, monkeypatch):
    """Catches a change to a project function the tour calls that breaks the page researchers
    copy from, which no other test runs: a renamed or re-signed function (attention_summary,
    value_at_hidden, ablate_head_hooks, compare_with ...) stops a cell; a change of behaviour
    fails one of its checks (an HF export whose predictions drift from MatrixBert's by more than
    1e-5, hooks left in place after a block, a plain torch hook on hook_pattern no longer seen,
    the drop detector disagreeing with summary.json). Run from notebooks/, where Jupyter starts a
    notebook's kernel, so the walk up to the repo root is exercised too (the committed outputs
    were made from the root)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("transformers")  # section 7
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_path(tmp_path / "jupyter")))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    copy = tmp_path / "tour.ipynb"
    shutil.copy(NOTEBOOK, copy)
    nb = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute()  # a cell that raises fails here, with its traceback

    cells = _code_cells(nb)
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"not every code cell ran: {counts}"
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    checks = _checks(nb)
    assert set(checks) == CHECKS, f"checks printed: {sorted(checks)}"
    assert all(line.endswith(": ok") for line in checks.values()), checks
    diff = float(HF_DIFF.search(checks["HF"])["diff"])
    assert diff < 1e-5
    committed = _checks(nbformat.read(NOTEBOOK, as_version=4))
    assert set(committed) == set(checks), "the committed outputs predate the tour's checks"


def test_the_committed_tour_carries_its_outputs_and_imports_only_shared_modules():
    """Catches a tour committed without its outputs (cleared, or saved by a tool that strips
    them: the page then shows code only on a code host), run out of order or half-way, with an
    error or a warning on the page, printing a machine's path (a working directory, a
    site-packages file named by a warning), or importing a script (`from probe import ...`: the
    layout's rule, README "Layout", that only the shared modules are imported)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = _code_cells(nb)
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"not run top to bottom once: {counts}"
    for i, cell in enumerate(cells):
        assert cell.outputs, f"code cell {i + 1} has no output"
        kinds = {(o.output_type, o.get("name")) for o in cell.outputs}
        assert ("error", None) not in kinds and ("stream", "stderr") not in kinds, (i + 1, kinds)
    images = [o for c in cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 7, "the figures are missing"
    assert set(_checks(nb)) == CHECKS
    printed = "".join(_text(c) for c in cells)
    for path in {str(ROOT), str(Path(sys.prefix)), "/tmp/", "/home/", "/Users/", "/root/"}:
        assert path not in printed, f"an output prints the machine path {path}"

    library = {"utils", *(f"utils.{r}" for r in ROOMS), *SHARED}
    project = {p.stem for p in ROOT.glob("*.py")} | {"utils", "scripts", "src"}
    for cell in cells:
        code = "\n".join(
            line for line in cell.source.splitlines() if not line.startswith(("%", "!"))
        )
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = {node.module}
            elif isinstance(node, ast.Import):
                modules = {a.name for a in node.names}
            else:
                continue
            ours = {m for m in modules if m.split(".")[0] in project}
            assert ours <= library, f"the tour imports the script(s) {ours - library}"


def test_the_figures_keep_a_backend_chosen_before_them():
    """Catches utils.plots.pyplot() forcing Agg on every call: in a notebook the first project
    figure switched the kernel off inline plotting, and figures stopped showing."""
    code = (
        "import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot\n"
        "from utils.plots import pyplot; pyplot(); assert matplotlib.get_backend() == 'svg'\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1000:]
