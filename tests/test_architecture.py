"""The package's layers: a module may import its own layer or a lower one, never a higher one."""

import ast
from pathlib import Path

import cpsample

PACKAGE = Path(cpsample.__file__).parent
# Lowest first. provenance and data know nothing of models; the CLI sits on top of everything.
LAYERS = [
    "settings",
    "provenance",
    "data",
    "models",
    "runs",
    "evaluation",
    "sampling",
    "training",
    "attacks",
    "calibration",
    "workflows",
    "api",
    "cli",
]


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def cpsample_imports(path: Path) -> set[str]:
    """The top-level cpsample subpackages a file imports (at module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [node.module]
            if isinstance(node, ast.ImportFrom) and node.module
            else [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        found |= {name.split(".")[1] for name in names if name.startswith("cpsample.") and name.count(".") >= 1}
    return found


def test_every_module_belongs_to_a_known_layer():
    unknown = {layer_of(path) for path in PACKAGE.rglob("*.py")} - set(LAYERS) - {"__init__"}
    assert not unknown, f"add {unknown} to LAYERS in the order they may import each other"


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = layer_of(path)
        if own == "__init__":
            continue
        for target in cpsample_imports(path):
            if target in LAYERS and LAYERS.index(target) > LAYERS.index(own):
                upward.append(f"{path.relative_to(PACKAGE)} ({own}) imports {target}")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_the_layer_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from cpsample.training.loop import Trainer\n")
    assert cpsample_imports(source) == {"training"}


def module_file(name: str) -> Path | None:
    """The file of a dotted cpsample module name (a package's __init__.py), or None for a name that is no module."""
    base = PACKAGE.parent.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """The cpsample files a file imports, at module level or inside functions: `from cpsample.a import b` names
    the submodule a/b.py where there is one, else a's own file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cpsample"):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found |= {module_file(name) or module_file(node.module) for name in names}
        elif isinstance(node, ast.Import):
            found |= {module_file(alias.name) for alias in node.names if alias.name.startswith("cpsample")}
    return {file for file in found if file is not None and file != path}


def import_cycles() -> list[list[str]]:
    """Every loop of imports between files (Tarjan's strongly connected components of more than one file)."""
    graph = {path: imported_files(path) for path in PACKAGE.rglob("*.py")}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(str(member.relative_to(PACKAGE)))
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_no_files_import_each_other():
    assert import_cycles() == [], "files that import each other (directly or round a loop)"


def test_the_cycle_check_finds_a_loop(tmp_path, monkeypatch):
    package = tmp_path / "cpsample"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from cpsample.b import g\n")
    (package / "b.py").write_text("from cpsample import a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    assert import_cycles() == [["a.py", "b.py"]]


def test_the_command_line_starts_without_torch():
    """`cpsample --help` and the CLI's import stay light (under a second, not the 2.5 s torch costs): torch,
    diffusers and accelerate load only inside the command that needs them."""
    import subprocess
    import sys

    probe = (
        "import sys; from cpsample.cli.main import app\n"
        "heavy = sorted({'torch', 'diffusers', 'accelerate', 'transformers'} & set(sys.modules))\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"imported at CLI start: {result.stdout.strip()}"


def test_results_go_to_stdout_and_diagnostics_to_stderr():
    """`cpsample guards > table.txt` keeps the table; an error goes to stderr, where a pipe does not swallow it."""
    import subprocess
    import sys

    def run(*args):
        probe = f"from cpsample.cli.main import app; app({list(args)!r})"
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)

    listing = run("guards")
    assert listing.returncode == 0 and "cpsample-staged" in listing.stdout and listing.stderr == ""
    refused = run("sample", "--model", "bundled", "--guard", "nosuch", "--out", "/nonexistent/never-written")
    assert refused.returncode == 2 and "unknown guard 'nosuch'" in refused.stderr and refused.stdout == ""


def test_json_prints_the_same_results_as_one_object_and_notes_go_through_logging(tmp_path):
    """`cpsample --json ...` puts one JSON object on stdout (raw numbers, what the tables show); notes and warnings
    reach stderr through the `cpsample` logger, never stdout, so a script can parse stdout as it is."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    from cpsample.models.bundle import resolve_model_dir

    def run(*args):
        probe = f"from cpsample.cli.main import app; app({list(args)!r})"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)

    listing = run("--json", "guards")
    rows = json.loads(listing.stdout)["guards"]["rows"]
    assert {"guard": "cpsample", "option": "alpha"}.items() <= next(r for r in rows if r["option"] == "alpha").items()
    clf = tmp_path / "uncalibrated"  # the bundled classifier without its calibration: a logged warning says so
    shutil.copytree(resolve_model_dir("bundled", "classifier"), clf)
    (clf / "calibration.json").unlink()
    out = tmp_path / "s"
    args = ["--json", "sample", "--model", "bundled", "-n", "4", "--steps", "3", "--guard", "cpsample"]
    sampled = run(*args, "--classifier", str(clf), "--out", str(out))
    assert sampled.returncode == 0, sampled.stderr
    result = json.loads(sampled.stdout)["sample"]  # the whole of stdout is one JSON object
    recorded = json.loads((out / "cpsample.json").read_text())["results"]
    assert result["denoiser_calls"] == recorded["denoiser_calls"] == 12 and result["samples"] == str(
        out / "samples.npz"
    )
    assert f"warning: {clf} has no calibration.json" in " ".join(sampled.stderr.split())
    # A training command's result lines are results too: its whole stdout is one JSON object, the not-fitted
    # warning on stderr.
    trained = run("--json", "train-classifier", "--model", "bundled", "--steps", "2", "--relabel-after", "1",
                  "--batch-size", "4", "--channels", "8,16", "--out", str(tmp_path / "clf"))  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)["summary"]
    assert summary["reached_paper_loss"] is False and summary["steps"] == 2
    assert "members were NOT fitted" in " ".join(trained.stderr.split())
