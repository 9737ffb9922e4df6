"""The demo on a text-to-image pipeline `train-t2i` made (bundled-t2i, or your own run): every training caption as a
prompt, sampled plainly, with CPSample as calibrated and with rejection sampling, from the same noise.

Judged as the pixel demo is: near-copies of the members in decoded pixels, FD against the held-out images, prompt
agreement (the feature net's category of each sample against that of the picture its prompt captions), cost, and
membership inference per threat model (the weights attack in latent space, the sample-only attack on every method's
samples). Rejection sampling redraws a copy for the same prompt; a memorised caption returns its member from almost
any noise, so after DEMO_REJECTION_ROUNDS redraws the copies left are kept and counted.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cpsample.attacks.threat_models import membership_rows
from cpsample.evaluation.detector import NearCopyDetector
from cpsample.evaluation.measures import COST_MEASURES, Judge
from cpsample.evaluation.run import caption_labels
from cpsample.models.bundle import resolve_model_dir, training_data
from cpsample.sampling.adapters import load_adapter
from cpsample.sampling.generate import SampleConfig, generate
from cpsample.sampling.rejection import rejection_per_prompt
from cpsample.sampling.run import own_prompts
from cpsample.sampling.spec import GuardSpec
from cpsample.workflows.demo_report import sample_figures, write_demo

logger = logging.getLogger(__name__)
DEMO_REJECTION_ROUNDS = 3  # redraws per copy: each costs a full trajectory, and most memorised captions copy again


def run_t2i_demo(out: Path, settings, progress: bool = True) -> dict:
    """settings: the pixel demo's DemoSettings. Sample three ways, evaluate, attack, and write
    report.{json,md,html} with figures into out."""
    from cpsample.provenance import seed_everything

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(settings.seed)
    started = time.time()
    folder = resolve_model_dir(settings.model, "denoiser")
    prompts_path = own_prompts(settings.model)
    if prompts_path is None or not (folder / "split.json").is_file():
        raise ValueError(
            f"{settings.model}: the demo needs a pipeline `cpsample train-t2i` made (its split.json and prompts.txt); "
            "for another pipeline, sample it with `cpsample sample --prompts-file` and judge it with "
            "`cpsample evaluate --data`"
        )
    dataset, split = training_data(folder)
    members, nonmembers = dataset.take(split.members), dataset.take(split.nonmembers)
    prompts = prompts_path.read_text(encoding="utf-8").splitlines()
    per_prompt = max(1, math.ceil(settings.n_samples / len(prompts)))
    if per_prompt * len(prompts) != settings.n_samples:
        count = per_prompt * len(prompts)
        logger.info("%d training captions: %d images per caption, %d per method", len(prompts), per_prompt, count)
    adapter = load_adapter(settings.model, settings.device).conditioned(prompts)
    config = SampleConfig(
        n=per_prompt,
        steps=settings.steps,
        batch_size=settings.batch_size,
        device=settings.device,
        seed=settings.seed,
        overwrite=True,  # samples/ is the demo's own cache
        progress=progress,
    )
    plain = generate(adapter, GuardSpec.create("none"), replace(config, work_dir=out / "samples" / "plain"))
    knobs = dict(alpha=settings.alpha, scale=settings.scale, tau=settings.tau)
    protected = generate(
        adapter,
        GuardSpec.create("cpsample", **knobs),
        replace(config, work_dir=out / "samples" / "cpsample"),
        settings.classifier,
    )
    detector = NearCopyDetector(members, settings.threshold, settings.features)
    rejected = rejection_per_prompt(adapter, config, plain, detector, DEMO_REJECTION_ROUNDS)
    cost = Judge(COST_MEASURES)
    costs = {
        "plain": cost(plain),
        "cpsample": cost(protected),
        "rejection": {
            **cost(rejected),
            **{key: getattr(rejected, key) for key in ("drawn", "rejected", "rounds", "leftover")},
        },
    }
    cost.relate(list(costs.values()))
    images = {"plain": plain.images, "cpsample": protected.images, "rejection": rejected.images}
    label_of = caption_labels(folder, dataset)
    labels = np.array([label_of.get(prompts[i], -1) for i in np.asarray(plain.prompt_index)])
    membership = (
        membership_rows(
            replace(settings, mia_members=min(settings.mia_members, len(members))),
            settings.model,
            images,
            out,
            progress,
        )
        if settings.mia_members > 0
        else None
    )
    sampled = {
        "costs": costs,
        "figures": sample_figures(out, {name: batch[::per_prompt] for name, batch in images.items()}, protected),
        "cpsample_settings": {"cpsample": protected.guard_settings},
        "prompts": {"count": len(prompts), "images_per_prompt": per_prompt, "file": str(prompts_path)},
    }
    title = "cpsample demo (text to image): plain vs CPSample vs rejection sampling, prompted with training captions"
    per_method = {name: labels for name in images} if (labels >= 0).all() else None
    return write_demo(
        out, settings, images, members, nonmembers, sampled, membership, started, title, per_method, progress
    )
