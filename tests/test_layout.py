"""The house: which module may import which (README "Layout", ../STYLE.md).

Catches a room of utils/ that imports one above it (the first step to a cycle), any module that
imports a script (a script's code then runs, and its options leak, wherever it is imported), and
an import cycle among the project's own modules."""

from __future__ import annotations

import ast

from conftest import ROOT

# utils/ rooms, lowest first: each may import only rooms before it in this list.
ROOMS = [
    "config",
    "drop",
    "metrics",
    "geometry",
    "runtime",
    "runs",
    "plots",
    "tracking",
    "sections",
    "outputs",
]
# Shared modules below the scripts, lowest first; each may import utils and those before it.
SHARED = ["data", "modeling_bert", "model", "cvx_nuc_norm", "train"]
SHARED += ["src", "src.gpt", "src.gpt.data", "src.gpt.model"]
# Who may import the shared modules that are also scripts (cvx_nuc_norm.py, train.py).
SCRIPT_USERS = {
    "cvx_nuc_norm": {"compare_nuc_bert", "ood"},
    "train": {"bench", "train_embed", "src.gpt.train"},
}
# scripts/redraw.py redraws an analysis's figures with that script's own `draw_figures`.
REDRAW = "scripts.redraw"


def project_modules() -> dict[str, set[str]]:
    """{module: the project modules it imports}, for every .py outside tests/ and .venv/."""
    files = [p for p in ROOT.rglob("*.py") if not {"tests", ".venv"} & set(p.parts)]
    names = {}
    for p in files:
        parts = p.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {}
    for name, path in names.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in names and m != name}
    return graph


def test_utils_rooms_import_only_lower_rooms():
    graph = project_modules()
    rooms = {f"utils.{r}" for r in ROOMS}
    assert rooms | {"utils"} == {m for m in graph if m.split(".")[0] == "utils"}
    for i, room in enumerate(ROOMS):
        allowed = {f"utils.{r}" for r in ROOMS[:i]}
        assert graph[f"utils.{room}"] <= allowed, (room, graph[f"utils.{room}"] - allowed)


def test_no_module_imports_a_script():
    graph = project_modules()
    library = {"utils", *(f"utils.{r}" for r in ROOMS), *SHARED}
    for module, imported in graph.items():
        for target in imported - library:
            assert module == REDRAW, f"{module} imports the script {target}"
        for target, users in SCRIPT_USERS.items():
            if target in imported:
                assert module in users, f"{module} imports {target}, which only {users} may"


def test_shared_modules_import_only_lower_ones():
    graph = project_modules()
    for i, module in enumerate(SHARED):
        below = {"utils", *(f"utils.{r}" for r in ROOMS), *SHARED[:i]}
        assert graph[module] <= below, (module, graph[module] - below)
