"""The README's table of commands cannot rot: each names a script and a config that load."""

import re
import subprocess
import sys

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text()
COMMANDS = re.findall(r"^\| [^|]+ \| `python3 ([^`]+)` \|$", README, flags=re.M)


# The top-level modules that are not scripts (the shared ones, tests/test_layout.py's SHARED).
MODULES = ["data", "modeling_bert", "model", "measures", "analysis", "nuclear_norm", "task"]
MODULES += ["outcomes", "trainer"]


def _script(command: str) -> tuple[str, list[str]]:
    """(the script as a path, the rest) of `python3 X.py ...` or `python3 -m pkg.mod ...`."""
    first, *args = command.split()
    if first == "-m":
        module, *args = args
        return module.replace(".", "/") + ".py", args
    return first, args


def test_the_table_lists_every_script():
    scripts = {_script(c)[0] for c in COMMANDS}
    expected = {p.name for p in ROOT.glob("*.py")} - {f"{m}.py" for m in MODULES}
    assert expected | {"src/gpt/train.py"} == scripts


@pytest.mark.parametrize("command", COMMANDS)
def test_command_loads(command):
    script, args = _script(command)
    assert (ROOT / script).is_file()
    check = ["--print-config"] if "--config" in args else ["--help"]
    how = ["-m", script.removesuffix(".py").replace("/", ".")] if "/" in script else [script]
    proc = subprocess.run(
        [sys.executable, *how, *args, *check],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_committed_results_hold_no_machine_paths():
    """Catches a results commit whose configs or logs name a temp or home folder of the machine
    that made them (they should name the committed folder)."""
    found = []
    for path in [*(ROOT / "docs").rglob("*"), *(ROOT / "checkpoints").rglob("*")]:
        if path.is_file() and path.suffix in (".yaml", ".log", ".json", ".md", ".txt", ".jsonl"):
            text = path.read_text(errors="replace")
            found += [
                f"{path.relative_to(ROOT)}: {m}"
                for m in re.findall(r"/(?:tmp|root|home|work)/\S+", text)
            ]
    assert not found, found[:5]


def test_citation_file_cites_the_paper():
    """Catches a CITATION.cff that no longer parses (GitHub's "Cite this repository" breaks)
    or that cites something else."""
    import yaml

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    paper = cff["preferred-citation"]
    assert cff["cff-version"] == "1.2.0" and paper["year"] == 2024
    assert paper["title"] == "Abrupt Learning in Transformers: A Case Study on Matrix Completion"
    assert [a["family-names"] for a in paper["authors"]] == ["Gopalani", "Lubana", "Hu"]


ANALYSES = [
    "att_maps.py",
    "copy_check.py",
    "compare_nuc_bert.py",
    "embed.py",
    "ood.py",
    "patch.py",
    "probe.py",
    "switch_models.py",
    "uniform_ablation.py",
    "train_embed.py",
    "src/gpt/train.py",
]


def test_the_tests_readme_names_tests_that_exist_for_every_analysis():
    """tests/README.md cannot rot: every `file::test` it names is a test function of that file,
    and every analysis script has a row."""
    import ast

    text = (ROOT / "tests" / "README.md").read_text()
    named = re.findall(r"(test_\w+\.py)::(test_\w+)", text)
    assert len(named) > 50
    defined = {}
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        defined[path.name] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    missing = [f"{f}::{t}" for f, t in named if t not in defined.get(f, set())]
    assert not missing, missing
    scripts = {row.split("|")[1].split()[0] for row in text.splitlines() if row.startswith("| ")}
    assert set(ANALYSES) <= scripts, set(ANALYSES) - scripts
