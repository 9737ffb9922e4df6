"""The text-to-image path on a latent model that copies (issue 40): plain sampling, CPSample, delayed CFG, opposite
guidance and rejection sampling on the same prompts (every training caption) and the same noise.

Each method samples `--per-prompt` images for each of the model's training captions (100 captions x 6 = 600 images on
`bundled-t2i`), seed `--seed`, and is measured by one Judge: near-copies of the members in decoded pixels (the
project's yardstick, cosine > 0.98), FD against the held-out pictures (emojinet features), prompt agreement (the share
of samples emojinet puts in the category of the picture their prompt captions) and time. Each method's row is saved
as it finishes (a rerun skips it); `--plot` draws the frontier (near-copy share against FD).

    OMP_NUM_THREADS=1 python bench/bench_t2i.py --out bench/results/t2i --method plain \
        --method cpsample:alpha=0.5,scale=2000
    python bench/bench_t2i.py --out bench/results/t2i --plot
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = "rows.jsonl"
REJECTION_ROUNDS = 10


def parse_method(text: str) -> tuple[str, str, dict]:
    """'plain', 'rejection' or 'GUARD:key=value,...' -> (label, guard, options)."""
    guard, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = float(value) if value.replace(".", "", 1).replace("-", "", 1).isdigit() else value
    return text, guard, options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled-t2i")
    parser.add_argument("--classifier", default=None, help="default: the bundled model's latent classifier")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--method", action="append", default=[])
    parser.add_argument("--per-prompt", type=int, default=6)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg-scale", type=float, default=None)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--plot", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.plot:
        plot(args.out)
        return
    done = {row["method"] for row in read_rows(args.out)}
    for text in args.method:
        if text in done:
            print(f"{text}: measured already")
            continue
        row = measure(args, *parse_method(text))
        with open(args.out / RESULTS, "a") as file:
            file.write(json.dumps(row) + "\n")
        print(json.dumps(row))


def measure(args, label: str, guard: str, options: dict) -> dict:
    from cpsample.evaluation.feature_net import load_feature_net
    from cpsample.evaluation.measures import Judge, Reference
    from cpsample.evaluation.run import caption_labels
    from cpsample.models.bundle import resolve_model_dir, training_data
    from cpsample.sampling.adapters import load_adapter
    from cpsample.sampling.generate import SampleConfig, generate
    from cpsample.sampling.latent import nearest_private
    from cpsample.sampling.run import own_prompts
    from cpsample.sampling.spec import GuardSpec

    folder = resolve_model_dir(args.model, "denoiser")
    dataset, split = training_data(folder)
    members, heldout = dataset.take(split.members), dataset.take(split.nonmembers)
    prompts = [line for line in own_prompts(args.model).read_text().splitlines() if line.strip()]
    category_of = caption_labels(folder, dataset)
    net = load_feature_net("bundled", channels=members.channels)
    judge = Judge.from_reference(
        Reference(detector=lambda images: nearest_private(images, members).copies, net=net, heldout=heldout.images),
        ("near_copy_share", "frechet_distance", "class_agreement", "guided_share", "time"),
    )
    adapter = load_adapter(args.model).conditioned(prompts, args.cfg_scale)
    config = SampleConfig(n=args.per_prompt, steps=args.steps, batch_size=args.per_prompt, seed=args.seed)
    classifier = args.classifier or (str(resolve_model_dir(args.model, "classifier")) if guard != "plain" else None)
    started = time.perf_counter()
    if guard == "rejection":
        result = rejection(adapter, config, members)
    else:
        spec = GuardSpec.create("none" if guard == "plain" else guard, **options)
        result = generate(adapter, spec, config, classifier=classifier if guard in ("cpsample",) else None)
    seconds = time.perf_counter() - started
    labels = np.array([category_of[prompts[i]] for i in result.prompt_index])
    row = {"method": label, "guard": guard, **options, **judge(result, seconds=seconds, labels=labels)}
    row["seconds_per_image"] = seconds / len(labels)
    row["denoiser_calls"] = int(result.denoiser_calls)
    return row


def rejection(adapter, config, members):
    """Rejection sampling per prompt slot (sampling.rejection.rejection_per_prompt), REJECTION_ROUNDS redraws at most;
    copies left then count as such."""
    from cpsample.sampling.generate import generate
    from cpsample.sampling.latent import nearest_private
    from cpsample.sampling.rejection import rejection_per_prompt

    first = generate(adapter, "none", config)
    found = rejection_per_prompt(
        adapter, config, first, lambda images: nearest_private(images, members).copies, REJECTION_ROUNDS
    )
    first.images, first.denoiser_calls = found.images, found.denoiser_calls
    first.trace = {}
    return first


def read_rows(out: Path) -> list[dict]:
    path = out / RESULTS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(out)
    figure, axis = plt.subplots(figsize=(9, 4.8))
    markers = "osD^vP*Xhp<>"
    for index, row in enumerate(rows):  # a legend, not labels: the protected methods sit close together
        share = 100 * row["near_copy_share"]
        label = f"{row['method']} ({share:.1f}%, FD {row['frechet_distance']:.2f})"
        axis.scatter(row["frechet_distance"], share, s=45, marker=markers[index % len(markers)], label=label)
    axis.set_xscale("log")  # (the paper's latent setting sits two decades right of the rest)
    axis.set_xlabel("FD against held-out pictures (emojinet features, log scale; lower is better)")
    axis.set_ylabel("near-copies of members (%)")
    axis.set_title("bundled-t2i, every training caption as a prompt, same noise")
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(out / "frontier.png", dpi=120)
    print(f"wrote {out / 'frontier.png'}")


if __name__ == "__main__":
    main()
