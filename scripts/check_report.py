"""Check a cpsample report.html in a real browser at 1200 px: headless Chromium renders it, a screenshot is saved,
and the page's own layout is measured (docs/testing.md, "The report in a browser").

    python scripts/check_report.py demo_out/report.html --screenshot report.png

Prints one JSON line and exits 1 when the page is wider than the window, a table hides columns behind a scroll
bar, an image did not load, or the verdict is not the first thing under the title. Needs `chromium` on PATH
(Debian: `apt-get install chromium`); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTH = 1200
# Runs in the page after layout; writes what it measured into the DOM, which --dump-dom prints.
MEASURE = """<script>
window.addEventListener('load', () => {
  const tables = [...document.querySelectorAll('table')];
  const hidden = tables.filter(t => t.scrollWidth > t.clientWidth + 1).map(t => {
    const title = t.previousElementSibling;
    return title ? title.textContent : '(untitled)';
  });
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
  const first = document.querySelector('h1 + *');
  const result = {
    page_width: document.documentElement.scrollWidth,
    tables: tables.length,
    tables_scrolling: hidden,
    images: document.images.length,
    images_broken: broken,
    verdict_first: !!first && first.id === 'verdict',
  };
  const out = document.createElement('pre');
  out.id = 'check-report';
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    return found


def run(browser: str, page: Path, *flags: str, height: int = 1000) -> str:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    command += [f"--window-size={WIDTH},{height}", "--allow-file-access-from-files", "--virtual-time-budget=5000"]
    command += [*flags, page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def measure(report: Path) -> dict:
    """The layout measures of report.html rendered at WIDTH px (a copy beside it carries the measuring script, so the
    report's figures load by the same relative paths)."""
    browser = chromium()
    with tempfile.NamedTemporaryFile("w", suffix=".html", dir=report.parent, delete=False) as copy:
        copy.write(report.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"))
    try:
        dom = run(browser, Path(copy.name), "--dump-dom")
    finally:
        Path(copy.name).unlink()
    found = re.search(r"<pre id=\"check-report\">(.*?)</pre>", dom, re.S)
    if found is None:
        raise RuntimeError("the page did not finish loading in the browser")
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def problems(measured: dict) -> list[str]:
    said = []
    if measured["page_width"] > WIDTH:
        said.append(f"the page is {measured['page_width']} px wide at a {WIDTH} px window")
    if measured["tables_scrolling"]:
        said.append(f"tables hide columns behind a scroll bar: {', '.join(measured['tables_scrolling'])}")
    if measured["images_broken"]:
        said.append(f"images did not load: {', '.join(measured['images_broken'])}")
    if not measured["verdict_first"]:
        said.append("the verdict is not the first thing under the title")
    return said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path, help="Also save a full-page PNG at 1200 px wide.")
    args = parser.parse_args()
    measured = measure(args.report)
    if args.screenshot:
        height = 800 + 60 * measured["tables"] + 500 * measured["images"]  # tall enough for the whole page
        run(chromium(), args.report, f"--screenshot={args.screenshot.resolve()}", height=height)
    said = problems(measured)
    print(json.dumps({**measured, "problems": said}))
    sys.exit(1 if said else 0)


if __name__ == "__main__":
    main()
