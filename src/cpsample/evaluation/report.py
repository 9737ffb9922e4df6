"""`write_report`: the results of `evaluate` as report.json, report.md and a self-contained report.html.

The HTML page has its styles inline and shows the PNG figures by relative path, so the folder can be zipped,
moved or served as is. The membership-inference section is optional: rows computed elsewhere are passed in.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

MEMBERSHIP_TITLE = "Membership inference"
FIGURE_CAPTIONS = {
    "similarity_histogram": "Similarity of each image to its nearest training image (paper Fig. 2). "
    "Right of the dashed line counts as a near-copy.",
    "top_pairs": "The most similar generated / training pairs per method (paper Fig. 1 and 3).",
    "trace": "CPSample's classifier probability p(y=1 | x_t) per denoising step, and how often guidance fired.",
    "mia_sample_nn_roc": "Sample-only membership inference (black box: only the generated samples are seen): ROC of "
    "each candidate's distance to its nearest sample, members vs held-out non-members, per method.",
}
# Keys of `evaluate`'s results that have their own section; any other top-level entry (e.g. sampling costs added
# by a caller) is shown as a generic table, so callers can extend the report without touching this module.
KNOWN_KEYS = {
    "settings",
    "methods",
    "per_sample",
    "reference",
    "comparisons",
    "membership_inference",
    "figures",
    "verdict",
}

Table = tuple[str, list[str], list[list[str]], str]  # (title, headers, rows, note)


def write_report(
    folder: str | Path,
    results: Mapping,
    figures: Mapping[str, str | Path] | None = None,
    membership=None,
    title: str = "cpsample evaluation",
) -> dict[str, Path]:
    """Write report.json, report.md and report.html into folder; returns their paths.

    figures: {key or caption: PNG path}; defaults to results["figures"] (file names relative to folder).
    Figures outside folder are copied in, so the page stays self-contained.
    membership: membership-inference rows (list of dicts, {name: {column: value}}, or {"rows": [...], "note": ...});
    defaults to results["membership_inference"].
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = _local_figures(folder, figures if figures is not None else results.get("figures") or {})
    membership = membership if membership is not None else results.get("membership_inference")
    record = {**results, "figures": figures, "membership_inference": membership}
    tables = build_tables(results, membership)
    paths = {"json": folder / "report.json", "markdown": folder / "report.md", "html": folder / "report.html"}
    said = verdict(results, membership)
    paths["json"].write_text(json.dumps({**record, "verdict": said}, indent=2, default=_jsonable))
    settings = results.get("settings", {})
    paths["markdown"].write_text(render_markdown(title, settings, tables, figures, membership, said))
    paths["html"].write_text(render_html(title, settings, tables, figures, membership, said))
    return paths


# ---------------------------------------------------------------- verdict: what a reader needs in 30 seconds


def verdict(results: Mapping, membership=None) -> list[str]:
    """One line per method against the first (the baseline): its near-copy cut, with the test's p where the run
    compared them, and its quality change; then, per threat model, the membership attack's best AUC per defence.
    A cut of nothing (a baseline without near-copies) is said as such, never as a win."""
    methods = list(results.get("methods", {}).items())
    if not methods:
        return []
    (base_name, base), lines = methods[0], []
    if len(methods) == 1:  # nothing to compare with: what was measured, and that no cut is claimed
        return [_alone(base_name, base)] + _membership_verdict(membership)
    tests = {c["method"]: c for c in results.get("comparisons", []) if c.get("baseline") == base_name}
    base_rep = base["replication"]
    for name, method in methods[1:]:
        rep = method["replication"]
        said = f"{name}: {rep['count']}/{rep['n']} near-copies ({_pct(rep['share'])}) against {base_name}'s "
        said += f"{base_rep['count']}/{base_rep['n']} ({_pct(base_rep['share'])})"
        if base_rep["count"] == 0:
            said += f": {base_name} made no near-copies, so this run shows no cut"
        elif rep["share"] <= base_rep["share"]:
            said += f": {1 - rep['share'] / base_rep['share']:.0%} fewer"
        else:
            said += f": {rep['share'] / base_rep['share'] - 1:.0%} MORE"
        if name in tests:
            said += f" (chi-square p = {_p(tests[name]['p_value'])})"
        quality, base_quality = method.get("quality"), base.get("quality")
        if quality and base_quality and quality["metric"] == base_quality["metric"] and base_quality["value"]:
            change = quality["value"] / base_quality["value"] - 1
            said += f"; {quality['metric']} {_num(quality['value'], 3)} against {_num(base_quality['value'], 3)}"
            said += f" ({change:+.0%}; lower is closer to the reference images)"
        lines.append(said)
    return lines + _membership_verdict(membership)


def _alone(name: str, method: Mapping) -> str:
    rep, quality = method["replication"], method.get("quality")
    said = f"{name}: {rep['count']}/{rep['n']} near-copies ({_pct(rep['share'])})"
    if quality and quality.get("value") is not None:
        said += f"; {quality['metric']} {_num(quality['value'], 3)}"
    return said + "; no other samples to compare with, so no cut is measured (give plain samples first, then these)"


def _membership_verdict(membership) -> list[str]:
    rows = membership.get("rows", []) if isinstance(membership, Mapping) else membership or []
    rows = [row for row in rows if isinstance(row, Mapping) and {"threat model", "defence", "AUC"} <= set(row)]
    lines = []
    for threat in dict.fromkeys(row["threat model"] for row in rows):
        best = {}
        for row in rows:
            if row["threat model"] == threat:
                best[row["defence"]] = max(best.get(row["defence"], 0.0), float(row["AUC"]))
        aucs = ", ".join(f"{auc:.2f} {defence}" for defence, auc in best.items())
        lines.append(f"membership, {threat}: best attack AUC {aucs} (0.5 = no leak, 1 = every member found)")
    return lines


# ---------------------------------------------------------------- tables (one builder, two renderers)


def headline(results: Mapping) -> dict:
    """The few numbers worth a glance, per method (for a run's record)."""
    out = {}
    for name, method in results["methods"].items():
        out[name] = {
            "near_copy_share": method["replication"]["share"],
            "max_similarity": method["similarity"]["max"],
            "relative_share": method["relative"]["share"],
        }
        if "quality" in method:
            out[name][method["quality"]["metric"]] = method["quality"]["value"]
        if "permutation" in method:
            out[name]["permutation_p"] = method["permutation"]["p_value"]
    return out


def build_tables(results: Mapping, membership=None) -> list[Table]:
    settings = results.get("settings", {})
    rows_in = list(results.get("methods", {}).items())
    reference = results.get("reference")
    tables = [_replication_table(rows_in, reference, settings)]
    if results.get("comparisons"):
        tables.append(_comparison_table(results["comparisons"]))
    tables.append(_relative_table(rows_in, settings))
    if any("quality" in method or "fid" in method for _, method in rows_in):
        tables.append(_quality_table(rows_in, reference))
    if any("permutation" in method for _, method in rows_in):
        tables.append(_permutation_table(rows_in))
    return tables + extra_tables(results)


def extra_tables(results: Mapping) -> list[Table]:
    """Generic tables for top-level entries a caller added: {row: {column: value}} or {key: value}."""
    tables, loose = [], []
    for key, value in results.items():
        if key in KNOWN_KEYS:
            continue
        if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
            headers, rows, _ = membership_rows(value)
            # keys as words: a header of several words can wrap, so the table fits the page
            tables.append((key.replace("_", " ").capitalize(), [h.replace("_", " ") for h in headers], rows, ""))
        elif isinstance(value, Mapping):
            tables.append(
                (
                    key.replace("_", " ").capitalize(),
                    ["key", "value"],
                    [[str(k), _cell(v)] for k, v in value.items()],
                    "",
                )
            )
        else:
            loose.append([key.replace("_", " "), _cell(value)])
    if loose:
        tables.append(("Other values", ["key", "value"], loose, ""))
    return tables


def _replication_table(methods, reference, settings) -> Table:
    threshold = settings.get("threshold")
    headers = ["method", "n", f"near-copies (> {threshold})", "share [95% CI]", "mean sim", "p95 sim", "max sim"]
    entries = list(methods) + ([(f"{reference['name']} (reference)", reference)] if reference else [])
    rows = [
        [
            name,
            str(entry.get("n", entry["replication"]["n"])),
            str(entry["replication"]["count"]),
            _share(entry["replication"]),
            _num(entry["similarity"]["mean"]),
            _num(entry["similarity"]["p95"]),
            _num(entry["similarity"]["max"]),
        ]
        for name, entry in entries
    ]
    note = (
        f"Cosine similarity of {settings.get('features', '?')} features to the nearest of "
        f"{settings.get('members', '?')} training members (exact search). Paper thresholds: "
        + ", ".join(f"{k} {v}" for k, v in settings.get("paper_thresholds", {}).items())
        + ". Exact Clopper-Pearson intervals. The reference row shows held-out real images of the same distribution."
    )
    return ("Near-copies in feature space (paper Table 1)", headers, rows, note)


def _comparison_table(comparisons) -> Table:
    headers = [
        "baseline",
        "method",
        "share baseline",
        "share method",
        "chi2",
        "p (chi-square, two-sided)",
        "p (Fisher, one-sided: method copies less)",
    ]
    rows = [
        [
            c["baseline"],
            c["method"],
            _pct(c["share_baseline"]),
            _pct(c["share_method"]),
            _num(c["chi2"], 3),
            _p(c["p_value"]),
            _p(c["fisher_p_one_sided"]),
        ]
        for c in comparisons
    ]
    return (
        "Does the method reduce near-copies? (2x2 contingency)",
        headers,
        rows,
        "scipy.stats.chi2_contingency with Yates' correction, as in the paper's Table 1; the one-sided Fisher exact "
        "test stays valid when counts are small or zero.",
    )


def _relative_table(methods, settings) -> Table:
    headers = [
        "method",
        "flagged (ratio <= 1)",
        "share [95% CI]",
        "min ratio",
        "median ratio",
        "min tiled l2",
        "median tiled l2",
    ]
    rows = [
        [
            name,
            str(m["relative"]["count"]),
            _share(m["relative"]),
            _num(m["relative"]["ratio_min"]),
            _num(m["relative"]["ratio_median"]),
            _num(m["relative"]["tiled_l2_min"]),
            _num(m["relative"]["tiled_l2_median"]),
        ]
        for name, m in methods
    ]
    note = (
        f"Carlini et al. (2023): ratio = d(x, nearest) / ({settings.get('relative_alpha')} x mean d to the "
        f"{settings.get('relative_neighbours')} nearest training images), d = {settings.get('relative_metric')} "
        "in pixel space; tiled l2 = max over 4x4 tiles of the RMS difference, [0, 1] pixel units."
    )
    return ("Pixel-space view (Carlini et al.)", headers, rows, note)


def _quality_table(methods, reference) -> Table:
    metric = next((m["quality"]["metric"] for _, m in methods if "quality" in m), "FD")
    with_fid = any("fid" in m for _, m in methods)
    headers = ["method", f"{metric} to members", "predicted class counts", "class agreement [95% CI]"]
    headers += ["FID (Inception) to members"] if with_fid else []
    rows = []
    for name, m in methods:
        q = m.get("quality", {})
        agreement = q.get("class_agreement")
        row = [
            name,
            _num(q.get("value"), 3),
            " ".join(map(str, q.get("predicted_class_counts", []))) or "-",
            _share({**agreement, "share": agreement["agreement"]}) if agreement else "-",
        ]
        rows.append(row + ([_num(m.get("fid"), 3)] if with_fid else []))
    if reference and "quality" in reference:
        q = reference["quality"]
        rows.append(
            [
                f"{reference['name']} (reference, n={q['n']})",
                _num(q["value"], 3),
                " ".join(map(str, q["predicted_class_counts"])),
                "-",
            ]
            + (["-"] if with_fid else [])
        )
    note = (
        f"{metric} is a Frechet distance in the feature space of a small classifier trained on the dataset's real "
        "labels - not FID, and not comparable with published FID values. It shrinks with more images: compare "
        "sets of equal size; the reference row is real held-out images, the floor to expect."
    )
    return ("Sample quality", headers, rows, note)


def _permutation_table(methods) -> Table:
    headers = [
        "method",
        "max sim to members (a0)",
        "null mean",
        "null p95",
        "share of null below a0",
        "p",
        "p floor (|S|/|T|)",
        "reject H0",
    ]
    rows = [
        [
            name,
            _num(p["observed_max_similarity"]),
            _num(p["null_mean"]),
            _num(p["null_p95"]),
            _num(p["share_below"], 3),
            _p(p["p_value"]),
            _num(p["members_share_of_pool"], 3),
            "yes" if p["reject"] else "no",
        ]
        for name, m in methods
        if (p := m.get("permutation"))
    ]
    level = next(m["permutation"]["level"] for _, m in methods if "permutation" in m)
    return (
        "Permutation test (paper App. E)",
        headers,
        rows,
        "H0: samples are no closer to the training members than to random subsets of the same size drawn from "
        f"members + non-members. p = (1 + #null >= a0) / (1 + rounds); reject at level {level}. "
        "'share of null below a0' is the number the paper's Table 6 reports. Even blatant copies cannot push p much "
        "below |S|/|T|, since each null subset holds a given member with that probability.",
    )


def membership_rows(membership) -> tuple[list[str], list[list[str]], str]:
    """Normalise the optional membership-inference input to (headers, rows, note)."""
    note = ""
    if isinstance(membership, Mapping) and "rows" in membership:
        note, membership = str(membership.get("note", "")), membership["rows"]
    if isinstance(membership, Mapping):
        membership = [{"name": name, **dict(row)} for name, row in membership.items()]
    rows = [dict(row) for row in membership]
    headers = []
    for row in rows:
        headers += [key for key in row if key not in headers]
    return headers, [[_cell(row.get(key, "")) for key in headers] for row in rows], note


# ---------------------------------------------------------------- renderers


def render_markdown(
    title: str, settings: Mapping, tables: list[Table], figures: Mapping[str, str], membership, said=()
) -> str:
    lines = [
        f"# {title}",
        "",
        *([VERDICT_TITLE, "", *(f"- {line}" for line in said), ""] if said else []),
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if k != "paper_thresholds"),
        "",
    ]
    for table_title, headers, rows, note in tables:
        lines += [f"## {table_title}", "", *_markdown_table(headers, rows), "", note, ""]
    lines += [f"## {MEMBERSHIP_TITLE}", ""]
    if membership:
        headers, rows, note = membership_rows(membership)
        lines += [*_markdown_table(headers, rows), "", note, ""]
    else:
        lines += ["Not computed for this report.", ""]
    if figures:
        lines += ["## Figures", ""]
        for key, file in figures.items():
            lines += [f"![{key}]({file})", "", caption(key), ""]
    return "\n".join(lines)


def _markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    escape = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(map(escape, headers)) + " |", "|" + "---|" * len(headers)]
    return out + ["| " + " | ".join(map(escape, row)) + " |" for row in rows]


VERDICT_TITLE = "## Verdict"
STYLE = """#verdict{background:#f6f8fa;border-left:4px solid #333;padding:.2em 1em;margin:1em 0}
#verdict li{margin:.3em 0}
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:.9em;max-width:900px}
section.optional{border:1px dashed #999;padding:0 1em;margin:1.5em 0}figure{margin:1em 0}img{max-width:100%}
code{background:#f3f3f3;padding:0 .2em}.grids{display:flex;gap:1em;flex-wrap:wrap}
.grids figure{flex:1 1 180px;margin:0}table{display:block;overflow-x:auto;max-width:100%}"""


def render_html(
    title: str, settings: Mapping, tables: list[Table], figures: Mapping[str, str], membership, said=()
) -> str:
    e = html.escape
    items = "".join(f"<li>{e(line)}</li>" for line in said)
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{e(title)}</h1>",
        f"<section id='verdict'><h2>Verdict</h2><ul>{items}</ul></section>" if said else "",
        "<p class='note'>"
        + ", ".join(f"<code>{e(str(k))}={e(str(v))}</code>" for k, v in settings.items() if k != "paper_thresholds")
        + "</p>",
    ]
    for table_title, headers, rows, note in tables:
        parts += [f"<h2>{e(table_title)}</h2>", _html_table(headers, rows), f"<p class='note'>{e(note)}</p>"]
    parts.append(f"<section class='optional' id='membership-inference'><h2>{e(MEMBERSHIP_TITLE)}</h2>")
    if membership:
        headers, rows, note = membership_rows(membership)
        parts += [_html_table(headers, rows), f"<p class='note'>{e(note)}</p>" if note else ""]
    else:
        parts.append("<p class='note'>Not computed for this report.</p>")
    parts.append("</section>")
    if figures:
        parts.append("<h2>Figures</h2>")
        grids = {key: file for key, file in figures.items() if key.startswith("grid_")}
        if grids:  # samples of every method from the same noise, side by side
            parts.append("<div class='grids'>" + "".join(_figure(key, file) for key, file in grids.items()) + "</div>")
        parts += [_figure(key, file) for key, file in figures.items() if key not in grids]
    parts.append("</body></html>")
    return "\n".join(parts)


def _figure(key: str, file) -> str:
    e = html.escape
    return (
        f"<figure><img src='{e(str(file), quote=True)}' alt='{e(key, quote=True)}'>"
        f"<figcaption class='note'>{e(caption(key))}</figcaption></figure>"
    )


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------- helpers


def caption(key: str) -> str:
    if key in FIGURE_CAPTIONS:
        return FIGURE_CAPTIONS[key]
    if key.startswith("grid_"):
        return f"Uncurated samples: {key[len('grid_') :]}"
    return key.replace("_", " ")


def _local_figures(folder: Path, figures: Mapping[str, str | Path]) -> dict[str, str]:
    """Figure paths relative to folder; files elsewhere are copied in so the report has no outside links."""
    local = {}
    for key, path in figures.items():
        path = Path(path)
        full = path if path.is_absolute() else folder / path
        if not full.is_file():
            raise FileNotFoundError(f"figure {key!r}: {full} does not exist")
        try:
            local[key] = full.resolve().relative_to(folder.resolve()).as_posix()
        except ValueError:
            shutil.copy2(full, folder / full.name)
            local[key] = full.name
    return local


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _share(entry: Mapping) -> str:
    return f"{_pct(entry['share'])} [{_pct(entry['ci_low'])}, {_pct(entry['ci_high'])}]"


def _p(value: float) -> str:
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
