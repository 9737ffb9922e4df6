"""What CPSample's latent classifier costs next to bundled-t2i's UNet, per denoising step, on one CPU thread.

For a batch of B latents a step runs the UNet once on 2B inputs (CFG); the guard runs the classifier forward on the B
latents (no graph) and forward + backward on the ones it fires on. This times the three calls for the shipped
classifier's width and narrower ones (random weights: only the cost is measured) and prints the step's cost
relative to the UNet's alone when every sample fires and when half do. It shows what a narrower classifier could
save before one is trained.

    OMP_NUM_THREADS=1 python bench/bench_t2i_classifier_cost.py
"""

from __future__ import annotations

import time

import torch

WIDTHS = ((32, 64, 64), (16, 32, 32), (16, 32))  # the first is the shipped classifier's
BATCHES = (6, 24)  # bench_t2i samples 6 images per prompt, one prompt per batch
REPEATS = 30


def seconds_per_call(call, repeats: int = REPEATS) -> float:
    call()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    from cpsample.models.classifier import TimeClassifier
    from cpsample.sampling.adapters import load_adapter

    torch.set_num_threads(1)
    torch.manual_seed(0)
    pipe = load_adapter("bundled-t2i").pipe
    print("| batch | widths | parameters | forward / UNet | forward+backward / UNet | step, all fire | half fire |")
    print("|---|---|---|---|---|---|---|")
    for batch in BATCHES:
        x, t = torch.randn(batch, 4, 16, 16), torch.full((batch,), 500)
        text = pipe.encode_prompt(["smile"] * (2 * batch), "cpu", 1, False)[0]
        with torch.no_grad():
            unet = seconds_per_call(lambda: pipe.unet(torch.cat([x, x]), t[0], encoder_hidden_states=text))
        for widths in WIDTHS:
            classifier = TimeClassifier(sample_size=16, in_channels=4, block_out_channels=widths).eval()
            classifier.requires_grad_(False)

            def forward():
                with torch.no_grad():
                    classifier(x, t)

            def forward_backward():
                x_in = x.clone().requires_grad_(True)
                p = classifier(x_in, t).softmax(-1)[:, 0]
                torch.autograd.grad(torch.log(1e-3 + p).sum(), x_in)

            f, fb = seconds_per_call(forward) / unet, seconds_per_call(forward_backward) / unet
            params = sum(p.numel() for p in classifier.parameters())
            print(
                f"| {batch} | {widths} | {params:,} | {f:.2f} | {fb:.2f} | {1 + f + fb:.2f}x | {1 + f + fb / 2:.2f}x |"
            )


if __name__ == "__main__":
    main()
