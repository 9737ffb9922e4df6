"""The package's layers: a module may import its own layer or a lower one, never a higher one."""

import ast
from pathlib import Path

import cpsample

PACKAGE = Path(cpsample.__file__).parent
# Lowest first. provenance and data know nothing of models; the CLI sits on top of everything.
LAYERS = [
    "provenance",
    "data",
    "models",
    "evaluation",
    "sampling",
    "training",
    "attacks",
    "workflows",
    "calibration",
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
