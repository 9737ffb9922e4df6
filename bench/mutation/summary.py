"""Summarise the last `mutmut run` over bench/mutation/scope.txt: counts per file and per function, then each
surviving mutant with its diff. Run from the repository root (bench/mutation/run.sh does)."""

from __future__ import annotations

import argparse
import collections
import fnmatch
import json
import re
from pathlib import Path

SCOPE = Path(__file__).with_name("scope.txt")
STATUS = {1: "killed", 3: "killed", 0: "survived", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout",
          255: "timeout", 5: "no tests", 33: "no tests", None: "not checked"}
COLUMNS = ("killed", "survived", "timeout", "no tests", "other", "not checked")


def scope_globs(path: Path = SCOPE) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def results(globs: list[str]) -> dict[str, tuple[Path, str]]:
    """mutant name -> (its source file, its status), for the mutants the globs select."""
    found = {}
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        source = meta.relative_to("mutants").with_suffix("")
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch.fnmatchcase(name, glob) for glob in globs):
                found[name] = (source, STATUS.get(code, "other"))
    return found


def table(counts: dict[str, collections.Counter]) -> list[str]:
    width = max([len(key) for key in counts] + [8])
    lines = [f"{'':{width}}  " + " ".join(f"{c:>11}" for c in COLUMNS) + "    total  score"]
    for key, count in counts.items():
        total = sum(count.values())
        tested = total - count["no tests"] - count["not checked"]
        score = f"{count['killed'] / tested:6.1%}" if tested else "     -"
        lines.append(f"{key:{width}}  " + " ".join(f"{count[c]:11d}" for c in COLUMNS) + f" {total:8d} {score}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=None, help="wall time of the run, to record")
    args = parser.parse_args()
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    found = results(scope_globs())
    by_file: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    by_function: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, (source, status) in sorted(found.items()):
        by_file[str(source)][status] += 1
        by_function[re.sub(r"__mutmut_\d+$", "", name)][status] += 1
    by_file = {**dict(sorted(by_file.items())), "all": sum(by_file.values(), collections.Counter())}
    lines = ["Mutation testing of cpsample's core logic: bash bench/mutation/run.sh (mutmut; scope: "
             "bench/mutation/scope.txt, tests: [tool.mutmut] in pyproject.toml).",
             "score = killed / (mutants that some selected test runs)."]
    if args.seconds is not None:
        lines.append(f"wall time of the run: {args.seconds:.0f} s")
    lines += ["", "Per file:", *table(by_file), "", "Per function:", *table(by_function), ""]
    survivors = [name for name, (_, status) in sorted(found.items()) if status not in ("killed", "not checked")]
    lines.append(f"Not killed ({len(survivors)}):")
    for name in survivors:
        source, status = found[name]
        lines += ["", f"# {name}: {status}", get_diff_for_mutant(name, path=source)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: lines.index("Per function:")]))
    print(f"{len(survivors)} not killed; written to {args.out}")


if __name__ == "__main__":
    main()
