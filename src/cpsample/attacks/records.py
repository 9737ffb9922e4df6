"""What each attack command leaves in its --out: result.json with every score, its figures, and the cpsample.json
record of the settings with the headline numbers."""

from __future__ import annotations

import json
from pathlib import Path

from cpsample.provenance import write_record


def save_mia(out: Path, results: dict, settings: dict) -> None:
    """`cpsample attack mia`'s outputs: result.json, roc.png and the record. results: run_mia's, by attack name."""
    from cpsample.attacks.plots import plot_attacks

    out = _made(out)
    summary = {name: result.to_dict(with_scores=True) for name, result in results.items()}
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    title = f"membership inference on {settings['model']} (guard: {guard_as_used(results)})"
    plot_attacks(results, out / "roc.png", title=title)
    headline = {
        name: {
            "auc": r.auc,
            "best_t": r.best_t,
            "tpr_at_1pct_fpr": r.best.tpr_at_1pct_fpr,
            "z": r.best.z,
            "p_value": r.best.p_value,
        }
        for name, r in results.items()
    }
    write_record(
        out, "attack mia", settings, {**headline, "result": str(out / "result.json"), "roc": str(out / "roc.png")}
    )


def guard_as_used(results: dict) -> str:
    """The guard a membership-inference run attacked, in words, with its calibrated knobs resolved."""
    from cpsample.sampling.guards import describe_settings

    return describe_settings(next(iter(results.values())).settings["guard"])


def save_sample_attack(out: Path, results: dict, settings: dict) -> None:
    """`cpsample attack sample-nn`'s outputs: result.json, roc.png and the record. results: by sample set name."""
    from cpsample.attacks.sample_nn import plot_sample_attacks

    out = _made(out)
    (out / "result.json").write_text(
        json.dumps({name: r.to_dict(with_scores=True) for name, r in results.items()}, indent=2, default=str)
    )
    title = f"sample-only membership inference on {settings['model']}'s members"
    plot_sample_attacks(results, out / "roc.png", title=title)
    headline = {
        name: {
            "auc": r.auc,
            "tpr_at_1pct_fpr": r.stats.tpr_at_1pct_fpr,
            "mann_whitney_p": r.mann_whitney_p,
            "n_samples": r.n_samples,
        }
        for name, r in results.items()
    }
    write_record(
        out,
        "attack sample-nn",
        settings,
        {**headline, "result": str(out / "result.json"), "roc": str(out / "roc.png")},
    )


def save_side(out: Path, result, settings: dict) -> None:
    """`cpsample attack side`'s outputs: result.json, the pool / attack / pairs figures and the record."""
    out = _made(out)
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
    figures = write_side_figures(out, result)
    headline = {
        "defence": settings["defence"],
        "pool": _side_headline(result.pool),
        "attack": _side_headline(result.attack),
        "pool_same_budget": _side_headline(result.pool_same_budget) if result.pool_same_budget else None,
        "surrogate_classes": result.clusters["kept"],
        "seconds": round(result.seconds, 1),
        "result": str(out / "result.json"),
        **figures,
    }
    write_record(out, "attack side", settings, headline)


def write_side_figures(out: Path, result) -> dict:
    """Grids of the pool and of the guided samples (one row per surrogate class), and the most similar pairs."""
    from cpsample.evaluation.figures import most_similar_pairs, pairs_figure
    from cpsample.sampling.outputs import image_grid

    out = Path(out)
    image_grid(result.pool_images[:100]).save(out / "pool.png")
    image_grid(result.attack_images, columns=result.config["per_class"]).save(out / "attack.png")
    extraction = result.attack_extraction
    pairs = {
        "SIDE attack": most_similar_pairs(
            result.attack_images.numpy(), result.training_images, extraction.similarity, extraction.nearest, k=8
        )
    }
    pairs_figure(pairs, out / "pairs.png")
    return {
        "pool_grid": str(out / "pool.png"),
        "attack_grid": str(out / "attack.png"),
        "pairs": str(out / "pairs.png"),
    }


def _side_headline(summary: dict) -> dict:
    return {key: summary[key] for key in ("n", "near_copies", "ams", "distinct_extracted", "ums")}


def _made(out: Path) -> Path:
    """The output folder, made if it is not there."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out
