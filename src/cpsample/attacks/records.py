"""Each attack command as one call: run it, and leave in its --out result.json with every score, its figures, and
the cpsample.json record of the settings with the headline numbers. --out is prepared already (cpsample.runs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from cpsample.attacks.settings import Defence, MiaSettings, SampleAttackSettings
from cpsample.provenance import seed_everything, write_record


def mia_into(
    out: Path, model: str = "bundled", defence: Defence | None = None, attack: MiaSettings | None = None
) -> dict:
    """`cpsample attack mia`: run_mia with the command's options, saved by save_mia; returns run_mia's results."""
    attack, defence = attack or MiaSettings(), defence or Defence()
    settings = {"model": model, **dataclasses.asdict(defence), **dataclasses.asdict(attack)}  # the CLI's names
    from cpsample.attacks.membership import run_mia
    from cpsample.sampling.spec import require_classifier

    require_classifier(defence.guard, defence.classifier)
    seed_everything(attack.seed)
    renamed = {"t": "timesteps", "members": "n_members", "nonmembers": "n_nonmembers"}  # run_mia's names
    results = run_mia(**{renamed.get(name, name): value for name, value in settings.items()})
    save_mia(out, results, settings)
    return results


def sample_attack_into(
    out: Path, samples: list[str], model: str = "bundled", attack: SampleAttackSettings | None = None
) -> dict:
    """`cpsample attack sample-nn`: the sample-only attack on the [NAME=]PATH samples files, saved by
    save_sample_attack; returns its results by sample set name."""
    from cpsample.attacks.sample_nn import run_sample_attack
    from cpsample.data.samples import read_sample_sets

    attack = attack or SampleAttackSettings()
    seed_everything(attack.seed)
    sets = read_sample_sets(samples)
    results = run_sample_attack(
        sets,
        model=model,
        n_members=attack.members,
        n_nonmembers=attack.nonmembers,
        features=attack.features,
        threshold=attack.threshold,
        seed=attack.seed,
        trust_torchscript=attack.trust_torchscript,
    )
    recorded = {name: value for name, value in dataclasses.asdict(attack).items() if name != "trust_torchscript"}
    save_sample_attack(out, results, {"samples": samples, "model": model, **recorded})
    return results


def side_into(out: Path, config, model: str = "bundled", defence: Defence | None = None, device: str = "cpu"):
    """`cpsample attack side`: run_side with config (a SideConfig; its seed seeds the run), working in out and saved
    by save_side; returns the SideResult."""
    from cpsample.attacks.side import run_side
    from cpsample.sampling.spec import require_classifier

    defence = defence or Defence()
    require_classifier(defence.guard, defence.classifier)
    seed_everything(config.seed)
    knobs = dataclasses.asdict(defence)
    settings = {"model": model, "defence": knobs.pop("guard"), **knobs, "device": device, **dict(config.__dict__)}
    result = run_side(
        model, defence.guard, defence.classifier, defence.alpha, defence.scale, defence.tau, config, work_dir=out,
        device=device,
    )  # fmt: skip
    save_side(out, result, settings)
    return result


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
