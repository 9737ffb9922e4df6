"""The HTML report in a real browser at 1200 px (scripts/check_report.py, docs/testing.md): the verdict first, no
table hiding columns behind a scroll bar, every image loaded, nothing wider than the window. Runs where `chromium`
is on PATH; skipped elsewhere."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium on PATH (docs/testing.md)")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_report.py"


def test_a_report_with_every_section_reads_at_1200_px(tmp_path):
    from cpsample.data import load_dataset
    from cpsample.evaluation import evaluate, write_report

    digits = load_dataset("mnist", image_size=16).images
    members, nonmembers = digits[:100], digits[100:200]
    results = evaluate(
        {"plain": members[:40], "cpsample": nonmembers[:40]}, members, nonmembers, figures_dir=tmp_path,
        permutation_rounds=20, progress=False,
    )  # fmt: skip
    # the demo's wide extra table: a cost row per method, keys as the measures name them
    cost = dict(seconds=1.0, seconds_per_image=0.025, denoiser_calls=2000, denoiser_calls_per_image=50)
    cost.update(time_vs_plain=1.0, share_of_steps_guided=0.12, share_of_samples_ever_guided=0.5)
    results["costs"] = {"plain": cost, "cpsample": cost}
    paths = write_report(tmp_path, results, title="browser check")
    found = subprocess.run(
        [sys.executable, str(SCRIPT), str(paths["html"]), "--screenshot", str(tmp_path / "shot.png")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    measured = json.loads(found.stdout.strip().splitlines()[-1])
    assert found.returncode == 0 and measured["problems"] == [], measured
    assert measured["verdict_first"] and measured["images"] >= 2 and measured["tables"] >= 5
    assert (tmp_path / "shot.png").stat().st_size > 10_000


def test_the_check_finds_a_table_wider_than_the_page(tmp_path):
    """The check can fail: a table of 30 unbreakable headers is caught."""
    page = tmp_path / "report.html"
    headers = "".join(f"<th>column_{i:02d}_without_spaces</th>" for i in range(30))
    page.write_text(
        "<!DOCTYPE html><html><head><style>table{display:block;overflow-x:auto;max-width:100%}</style></head><body>"
        f"<h1>t</h1><section id='verdict'>v</section><h2>Wide</h2><table><tr>{headers}</tr></table></body></html>"
    )
    found = subprocess.run([sys.executable, str(SCRIPT), str(page)], capture_output=True, text=True, timeout=300)
    assert found.returncode == 1 and "Wide" in json.loads(found.stdout)["tables_scrolling"]
