"""Summarise the last `mutmut run` over bench/mutation/scope.txt: counts per file and per function, then each
surviving mutant with its diff. Run from the repository root (bench/mutation/run.sh does)."""

from __future__ import annotations

import argparse
import collections
import fnmatch
import hashlib
import json
import re
from pathlib import Path

SCOPE = Path(__file__).with_name("scope.txt")
# Survivors judged equivalent (no observable change): a mutant's name, then the reason on an indented line.
EQUIVALENT = Path(__file__).with_name("equivalent.txt")
STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    36: "timeout",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    5: "no tests",
    33: "no tests",
    None: "not checked",
}
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


def source_digest(found: dict[str, tuple[Path, str]]) -> str:
    """One hash of the mutated source files, so a rerun of survivors only is refused once the code has changed."""
    digest = hashlib.sha256()
    for source in sorted({str(source) for source, _ in found.values()}):
        digest.update(source.encode() + Path(source).read_bytes())
    return digest.hexdigest()[:16]


def not_killed(record: Path) -> list[str]:
    """The mutants a summary's record (NAME.json) did not see killed: what a rerun after new tests has to try."""
    return sorted(name for name, status in json.loads(record.read_text())["status"].items() if status != "killed")


def equivalent_mutants(path: Path = EQUIVALENT) -> dict[str, str]:
    if not path.exists():
        return {}
    reasons: dict[str, str] = {}
    name = None
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace() and name is not None:
            reasons[name] = (reasons[name] + " " + line.strip()).strip()
        else:
            name = line.strip()
            reasons[name] = ""
    return reasons


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
    parser.add_argument(
        "--base",
        type=Path,
        default=None,
        help="an earlier run's NAME.json: this run tried only its survivors, so its killed mutants "
        "count as killed (valid while the source is unchanged and tests were only added)",
    )
    parser.add_argument("--not-killed", type=Path, default=None, help="print the base's survivors' names and exit")
    args = parser.parse_args()
    if args.not_killed is not None:
        print("\n".join(not_killed(args.not_killed)))
        return
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    found = results(scope_globs())
    carried = 0
    if args.base is not None:
        base = json.loads(args.base.read_text())
        if base["source"] != source_digest(found):
            raise SystemExit(f"the source changed since {args.base}: run the whole scope again")
        for name, (source, status) in found.items():
            if status == "not checked" and base["status"].get(name) == "killed":
                found[name], carried = (source, "killed"), carried + 1
    by_file: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    by_function: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, (source, status) in sorted(found.items()):
        by_file[str(source)][status] += 1
        by_function[re.sub(r"__mutmut_\d+$", "", name)][status] += 1
    by_file = {**dict(sorted(by_file.items())), "all": sum(by_file.values(), collections.Counter())}
    lines = [
        "Mutation testing of cpsample's core logic: bash bench/mutation/run.sh (mutmut; scope: "
        "bench/mutation/scope.txt, tests: [tool.mutmut] in pyproject.toml).",
        "score = killed / (mutants that some selected test runs).",
    ]
    if args.seconds is not None:
        lines.append(f"wall time of the run: {args.seconds:.0f} s")
    if args.base is not None:
        lines.append(
            f"this run tried the {len(found) - carried} mutants {args.base} did not see killed; its "
            f"{carried} killed ones count as killed (same source, tests only added)"
        )
    lines += ["", "Per file:", *table(by_file), "", "Per function:", *table(by_function), ""]
    survivors = [name for name, (_, status) in sorted(found.items()) if status not in ("killed", "not checked")]
    equivalent = equivalent_mutants()
    judged = [name for name in survivors if name in equivalent]
    lines.append(
        f"Not killed: {len(survivors)}, of which judged equivalent (bench/mutation/equivalent.txt): "
        f"{len(judged)}; open: {len(survivors) - len(judged)}"
    )
    for name in survivors:
        source, status = found[name]
        verdict = f"{status}, equivalent: {equivalent[name]}" if name in equivalent else status
        lines += ["", f"# {name}: {verdict}", get_diff_for_mutant(name, path=source)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    record = {"source": source_digest(found), "status": {name: status for name, (_, status) in sorted(found.items())}}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=0, ensure_ascii=False) + "\n")
    print("\n".join(lines[: lines.index("Per function:")]))
    print(f"{len(survivors)} not killed ({len(judged)} judged equivalent); written to {args.out}")


if __name__ == "__main__":
    main()
