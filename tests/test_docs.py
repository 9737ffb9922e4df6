"""The generated command reference matches the command line, and the code keeps the house style."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_cli_md_is_what_the_cli_generates():
    """docs/cli.md is written by scripts/make_cli_docs.py; an option added or changed without rerunning it fails."""
    spec = importlib.util.spec_from_file_location("make_cli_docs", ROOT / "scripts" / "make_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = (ROOT / "docs" / "cli.md").read_text()
    assert written == module.render(), "docs/cli.md is stale: run `python scripts/make_cli_docs.py`"


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is installed by the test extra (scripts/install.sh)")
def test_the_code_is_ruff_clean_and_formatted():
    """House style (pyproject.toml [tool.ruff]): lint and format, line length 119. Fix with `ruff check --fix .` and
    `ruff format .`."""
    for command in (["ruff", "check", "--quiet", "."], ["ruff", "format", "--check", "--quiet", "."]):
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
