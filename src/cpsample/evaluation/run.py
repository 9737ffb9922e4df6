"""`cpsample evaluate` as one call: read the named samples files, judge them against a model's members, and leave
report.{html,md,json}, the figures and the cpsample.json record in --out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpsample.data import load_dataset
from cpsample.data.captions import MODEL_CAPTIONS, read_captions
from cpsample.data.samples import load_samples, parse_named_paths
from cpsample.evaluation.honesty import vacuous_baseline
from cpsample.evaluation.report import headline, write_report
from cpsample.evaluation.settings import EvaluateSettings
from cpsample.evaluation.suite import evaluate
from cpsample.models.bundle import resolve_model_dir, training_data
from cpsample.provenance import seed_everything, write_record

logger = logging.getLogger(__name__)


@dataclass
class EvaluationRun:
    """What an evaluate run measured and wrote: `evaluate`'s results, the report's paths, and the warnings to say."""

    results: dict
    report: dict[str, Path]
    warnings: list[str]


def evaluate_run(out: Path, samples: list[str], settings: EvaluateSettings | None = None) -> EvaluationRun:
    """samples: NAME=PATH specs, the first the baseline. out must be prepared (cpsample.runs.RunFolder) already."""
    settings = settings or EvaluateSettings()
    model, data, features, threshold = settings.model, settings.data, settings.features, settings.threshold
    quality_net, inception, seed = settings.quality_net, settings.inception, settings.seed
    seed_everything(seed)
    named = parse_named_paths(samples)
    sets = {name: load_samples(path) for name, path in named.items()}
    if data is None:
        dataset, split = training_data(resolve_model_dir(model, "denoiser"))
        members = dataset.take(split.members)
        nonmembers = dataset.take(split.nonmembers) if split.nonmembers else None
    else:  # a model trained elsewhere: the user names its training images
        dataset = members = load_dataset(data, image_size=next(iter(sets.values())).size)
        nonmembers = None
    labels = {name: s.labels for name, s in sets.items() if s.labels is not None}
    for name, path in named.items():  # text-to-image samples: the category of the image each prompt captions
        found = None if name in labels else prompt_labels(path, resolve_model_dir(model, "denoiser"), dataset)
        labels.update({name: found} if found is not None else {})
    results = evaluate(
        {name: s.images for name, s in sets.items()},
        members,
        nonmembers,
        features=features,
        threshold=threshold,
        quality_net=None if quality_net == "none" else quality_net,
        sample_labels=labels or None,
        relative_metric=settings.relative_metric,
        permutation_rounds=settings.permutation_rounds,
        top_k=settings.top_k,
        figures_dir=out,
        trust_torchscript=settings.trust_torchscript,
        inception_weights=inception,
        seed=seed,
    )
    paths = write_report(out, results)
    settings = {
        "samples": {k: str(v) for k, v in named.items()},
        "model": model,
        "data": data,
        "features": features,
        "threshold": results["settings"]["threshold"],
        "quality_net": quality_net,
        "inception": inception,
        "permutation_rounds": settings.permutation_rounds,
        "relative_metric": settings.relative_metric,
        "top_k": settings.top_k,
        "trust_torchscript": settings.trust_torchscript,
        "seed": seed,
    }
    warnings = _vacuous_baseline(results) if len(named) > 1 else []
    report = {k: str(v) for k, v in paths.items()}
    write_record(
        out,
        "evaluate",
        settings,
        {"report": report, "headline": headline(results), **({"warnings": warnings} if warnings else {})},
    )
    return EvaluationRun(results, paths, warnings)


def _vacuous_baseline(results: dict) -> list[str]:
    """A warning when the baseline made no near-copies: then no method's cut proves any protection."""
    baseline = results["settings"]["baseline"]
    counted = results["methods"][baseline]["replication"]
    vacuous = vacuous_baseline(f"the baseline {baseline!r}", counted["count"], counted["n"])
    return [vacuous] if vacuous else []


def prompt_labels(samples_path: Path, model_dir: Path, dataset) -> np.ndarray | None:
    """For samples of a text-to-image model prompted with its training captions: each sample's intended class, the
    label of the training image its prompt captions (so class agreement reads as prompt agreement). None when the
    samples hold no prompts, the model no captions (train-t2i's captions.txt), the data no labels, or a prompt is
    no training caption."""
    captions_path = Path(model_dir) / MODEL_CAPTIONS
    if dataset.labels is None or not captions_path.is_file():
        return None
    try:
        with np.load(samples_path, allow_pickle=False) as archive:
            if "prompts" not in archive or "prompt_index" not in archive:
                return None
            prompts, prompt_index = [str(p) for p in archive["prompts"]], archive["prompt_index"]
    except (OSError, ValueError):
        return None
    label_of = caption_labels(model_dir, dataset)
    if any(prompt not in label_of for prompt in prompts):
        logger.info("%s: some prompts are no training captions of %s; no prompt agreement", samples_path, model_dir)
        return None
    return np.array([label_of[prompts[i]] for i in prompt_index], dtype=np.int64)


def caption_labels(model_dir: Path, dataset) -> dict[str, int]:
    """caption -> the label of the training image it captions (train-t2i's captions.txt against the dataset)."""
    row_of = {name: row for row, name in enumerate(dataset.names)}
    return {
        caption: int(dataset.labels[row_of[name]])
        for name, caption in read_captions(Path(model_dir) / MODEL_CAPTIONS, None).items()
        if name in row_of
    }
