"""The house: which module may import which (README "Layout").

Catches a room of utils/ that imports one above it (the first step to a cycle), any module that
imports a script (a script's code then runs, and its options leak, wherever it is imported), a
utils/__init__.py that re-exports names again (two ways to spell each import), a module that
edits sys.path, and a module named like another one it could shadow."""

from __future__ import annotations

import ast

from conftest import ROOT

# utils/ rooms, lowest first: each may import only rooms before it in this list (the order of
# utils/__init__.py's docstring and of README "Layout").
ROOMS = [
    "config",
    "drop",
    "floats",
    "geometry",
    "files",
    "hf",
    "runs",
    "device",
    "profiling",
    "signals",
    "processes",
    "plots",
    "tracking",
    "results",
]
# Shared modules below the scripts, lowest first; each may import utils and those before it.
SHARED = ["data", "modeling_bert", "model", "measures", "outcomes", "analysis", "nuclear_norm"]
SHARED += ["task", "trainer", "src", "src.gpt", "src.gpt.sequences", "src.gpt.model", "scripts"]
SHARED += ["scripts.claims_report"]  # the report half of scripts/claims.py (no command of its own)


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


def test_utils_re_exports_nothing_and_lists_its_rooms_in_order():
    init = (ROOT / "utils" / "__init__.py").read_text()
    tree = ast.parse(init)
    assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    listed = [line.split()[0] for line in init.splitlines() if line.startswith("    ")]
    assert [name.removesuffix(".py") for name in listed if name.endswith(".py")] == ROOMS


def test_no_module_imports_a_script():
    graph = project_modules()
    library = {"utils", *(f"utils.{r}" for r in ROOMS), *SHARED}
    for module, imported in graph.items():
        assert imported <= library, f"{module} imports the script(s) {imported - library}"


def test_shared_modules_are_not_scripts():
    """Catches a shared module that grew a command of its own: whoever imports it then imports a
    script (the rule above, sidestepped by listing the script as shared)."""
    for module in SHARED:
        path = ROOT / module.replace(".", "/")
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        assert "__main__" not in path.read_text(), module


def test_shared_modules_import_only_lower_ones():
    graph = project_modules()
    for i, module in enumerate(SHARED):
        below = {"utils", *(f"utils.{r}" for r in ROOMS), *SHARED[:i]}
        assert graph[module] <= below, (module, graph[module] - below)


def test_no_module_edits_sys_path_or_shadows_another():
    """scripts/ and src/gpt/ run as modules (python3 -m scripts.sweep) from the repo root, so no
    file needs a sys.path edit, and a bare import always means the top-level module. Catches a
    module in a package that imports a top-level module by a name one of its siblings also has
    (src/gpt/data.py once imported the top-level data.py through sys.path order)."""
    files = [p for p in ROOT.rglob("*.py") if not {"tests", ".venv"} & set(p.parts)]
    for path in files:
        assert "sys.path" not in path.read_text(), path
    graph = project_modules()
    for module, imported in graph.items():
        package, _, _ = module.rpartition(".")
        if not package or package == "utils":
            continue
        siblings = {m.rpartition(".")[2] for m in graph if m.rpartition(".")[0] == package}
        bare = {m for m in imported if "." not in m}
        assert not bare & siblings, (module, bare & siblings)
