"""CPSample in two stages: a selective classifier on the denoised estimate early, the paper's rule late.

Early (t <= early_max_t) a classifier trained with `--negatives samples` judges x0_hat (`denoised=True`): there it
tells would-be copies from other samples (81% vs 30% over-confident at t = 280 on the bundled model) long before
x_t does, so a gentle push diverts most copies while the image is still undecided. Late (t <= max_t) the main
classifier guards x_t with the paper's rule and catches what is left. Both classifiers are random-label classifiers
of the members; nothing of the training images is needed at sampling time. bench/README.md, Findings 9-12, has the
frontier (bundled model, 4 seeds of 600 images, as calibrated: late s 30, the stages taking turns at t = 200, the
early classifier trained at t <= 100: 1.0% near-copies at FD +0.9% pooled vs plain's 33.8%, about 1.2x plain's time;
the one-stage rule at s 10: 4.2% at +61%).

With `late_denoised=True` the late stage is selective too: the early classifier judges x0_hat at t <= 200 as well
(with the late alpha and s), so only would-be copies pay for a gradient. On the bundled model (Finding 13) that keeps
96% of the copies away at plain's FD in about 1.1x plain's time, where the paper's classifier on x_t pushes 57% of all
samples at each late step (97%, the same FD, about 1.15-1.2x).

`late_classifier` swaps the late stage's classifier for another of the same members (a narrower one; bench/README,
Finding 18, has `calibrate --late-classifier` choosing between them).

`max_push` caps each sample's push in both stages. The classifiers' gradients are heavy-tailed, and on a model whose
every sample sits near a member (the fine-tuned model of Finding 12) the few huge uncapped pushes wreck their samples:
capped, FD_sknet fell from 11.4 to 3.9 at a similar near-copy share, about AMG's frontier. On the bundled model the
uncapped push stays best, so `calibrate` tries both.

`cpsample calibrate --early-classifier FOLDER` measures this guard against the one-stage rule and, when it wins,
records it in the classifier's calibration.json; `--guard cpsample` with no knobs then builds it
(`CPSampleGuard.from_options`). The bundled classifier's calibration chose it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cpsample.models.bundle import SELECTIVE, is_bundled
from cpsample.sampling.guards.base import GuardContext, GuardOptions, context_model, option, unconditional_denoiser
from cpsample.sampling.guards.chain import ChainGuard
from cpsample.sampling.guards.cpsample import CPSampleGuard, CPSampleOptions, load_guard_classifier

# The bundled selective classifier lives next to the bundled classifier, under this folder name.
SELECTIVE_PART = SELECTIVE


@dataclass(frozen=True)
class StagedCPSampleOptions(GuardOptions):
    early_classifier: str = option(
        "bundled",
        "Folder of a classifier trained with --negatives samples (judges x0_hat "
        "early); 'bundled': the bundled model's selective classifier.",
    )
    early_alpha: float = option(0.01, "Early stage: guide when p(y | x0_hat) > 1 - early_alpha for either label.")
    early_scale: float = option(3.0, "Early stage: guidance scale of the push through x0_hat.")
    early_max_t: int = option(500, "Early stage acts at t <= early_max_t.")
    early_min_t: int = option(
        0, "Early stage acts at t >= early_min_t (max_t + 1: never at a step of the late stage)."
    )
    alpha: float = option(0.1, "Late stage (main classifier on x_t, the paper's rule): alpha.")
    scale: float = option(10.0, "Late stage: guidance scale s.")
    max_t: int = option(200, "Late stage acts at t <= max_t.")
    min_t: int = option(
        0,
        "Late stage acts at t >= min_t (0: down to the last step). Skipping the last steps saves "
        "their checks and gradients but was measured to lose more protection than it gains in FD.",
    )
    tau: float = option(0.001, "tau in log(tau + p), both stages.")
    max_push: float | None = option(
        None,
        "Both stages: cap each sample's push at this RMS, in units of eps (None: uncapped). On a model whose samples "
        "all sit near a member, a few huge uncapped pushes wreck their samples; a cap of 1.5 kept the cut there.",
    )
    cap_x0: bool = option(
        False, "Both stages: measure max_push on x0_hat instead of eps. Measured: no better than the cap on eps."
    )
    smooth_push: float | None = option(
        None, "Both stages: low-pass each push with a Gaussian of this width in pixels. Measured not to pay."
    )
    late_denoised: bool = option(
        False,
        "Late stage: judge x0_hat with the early classifier too (a selective late "
        "stage) instead of x_t with the main classifier: it fires on fewer samples, so it affords a looser alpha.",
    )
    late_classifier: str | None = option(
        None,
        "Late stage on x_t: this classifier folder instead of the main one, "
        "e.g. a narrower one of the same members (--channels 16,32,32), whose "
        "gentler push won on one model and lost on another; `calibrate --late-classifier` "
        "measures it on yours. None: the main classifier.",
    )
    jacobian: bool = option(
        False,
        "The stages judging x0_hat follow its gradient to x_t through the UNet (AMG's "
        "exact gradient), paid only by fired samples. Measured: no better protection for its cost.",
    )

    def push_shaping(self) -> dict:
        """The options both stages' pushes share, as CPSampleOptions / CPSampleGuard keywords."""
        return dict(max_push=self.max_push, cap_x0=self.cap_x0, smooth_push=self.smooth_push)

    def late_options(self) -> CPSampleOptions:
        """The late stage's knobs as one-stage options (building them validates them)."""
        return CPSampleOptions(
            alpha=self.alpha, scale=self.scale, tau=self.tau, max_t=self.max_t, min_t=self.min_t, **self.push_shaping()
        )

    def check(self) -> None:
        if self.late_denoised and self.late_classifier is not None:
            raise ValueError(
                "late_denoised=true judges x0_hat with the early classifier late too; it takes no "
                "late_classifier (that one judges x_t)"
            )
        CPSampleOptions(
            alpha=self.early_alpha,
            scale=self.early_scale,
            tau=self.tau,
            max_t=self.early_max_t,
            min_t=self.early_min_t,
            **self.push_shaping(),
        )
        self.late_options()


class StagedCPSampleGuard(ChainGuard):
    """CPSample in two stages: a selective classifier on x0_hat early, the main classifier on x_t late."""

    name = "cpsample-staged"
    Options = StagedCPSampleOptions
    uses_classifier = True

    def __init__(self, early: CPSampleGuard, late: CPSampleGuard, late_classifier: str | None = None):
        """late_classifier: the folder the late stage's classifier came from, where it is not the main one (recorded
        in settings, so a run's record says which classifier guarded it late)."""
        if not early.denoised:
            raise ValueError("the early stage judges the denoised estimate (denoised=True)")
        super().__init__([early, late])
        self.late_classifier = late_classifier
        self.calibration: str | None = None  # the calibration.json that chose two stages, when one did

    @classmethod
    def from_options(cls, options: StagedCPSampleOptions, context: GuardContext) -> "StagedCPSampleGuard":
        early_classifier = options.early_classifier
        if early_classifier == "bundled" and isinstance(context.classifier, str) and is_bundled(context.classifier):
            early_classifier = context.classifier  # the guarded bundled model's selective classifier, if it has one
        classifier, folder = load_guard_classifier(early_classifier, context.device, SELECTIVE_PART)
        unet, denoiser = unconditional_denoiser(context_model(context)) if options.jacobian else (None, None)

        def selective(alpha, scale, max_t, min_t):  # the selective classifier judging x0_hat
            return CPSampleGuard(
                classifier,
                alpha=alpha,
                scale=scale,
                tau=options.tau,
                max_t=max_t,
                min_t=min_t,
                denoised=True,
                folder=folder,
                denoiser=denoiser,
                unet=unet,
                **options.push_shaping(),
            )

        early = selective(options.early_alpha, options.early_scale, options.early_max_t, options.early_min_t)
        if options.late_denoised:  # one selective classifier judges x0_hat in both stages
            return cls(early, selective(options.alpha, options.scale, options.max_t, options.min_t))
        if options.late_classifier is None:
            return cls(early, CPSampleGuard.from_options(options.late_options(), context))
        late_context = replace(context, classifier=options.late_classifier)
        return cls(
            early, CPSampleGuard.from_options(options.late_options(), late_context), str(options.late_classifier)
        )

    @property
    def trace(self) -> dict[str, list[np.ndarray]]:
        """The members' traces, plus "fired": guided by either stage (what reports and plots count), and "p1": the late
        stage's p(y=1 | x_t), as the one-stage guard records it."""
        merged = dict(ChainGuard.trace.fget(self))
        prefixes = getattr(self, "prefixes", [])
        stages = [merged.get(f"{prefix}.fired") for prefix in prefixes]
        if stages and all(stage is not None for stage in stages):
            merged["fired"] = [
                np.logical_or(*pair).astype(np.float32) for pair in zip(*stages)
            ]  # as members record it
        if prefixes and f"{prefixes[-1]}.p1" in merged:
            merged["p1"] = merged[f"{prefixes[-1]}.p1"]
        return merged

    @trace.setter
    def trace(self, value) -> None:
        ChainGuard.trace.fset(self, value)

    def __repr__(self) -> str:
        early, late = self.guards
        other = "" if self.late_classifier is None else f", late_classifier={self.late_classifier!r}"
        return (
            f"{type(self).__name__}({self.name!r}, early={early!r}, late={late!r}{other}, "
            f"calibration={self.calibration or 'given'!r})"
        )

    def settings(self) -> dict:
        early, late = self.guards
        other = {} if self.late_classifier is None else {"late_classifier": self.late_classifier}
        return {"guard": self.name, "early": early.settings(), "late": late.settings(), **other}
