"""CPSample (classifier-protected sampling): steer away from points a random-label classifier is sure about.

Paper (seed 002) section 3.1 with the App. D fix: for each sample whose p(y=c | x_t, t) < alpha for a label c,
eps <- eps - s * sqrt(1 - abar_t) * grad_x log(tau + p(y=c | x_t, t)), i.e. push towards the unlikely label.
Samples where the classifier is not over-confident are left exactly as they were.

With `denoised=True` the classifier judges the denoised estimate x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
at t = 0 instead of x_t, and the push follows x0_hat's gradient back to x_t with eps held fixed (the UNet's Jacobian
is ignored, so it costs what the x_t rule costs). A classifier trained with `--negatives samples` is selective on
x0_hat from t ~ 400 on, when x_t itself still says little (bench/README.md, Finding 9). `jacobian=True` follows the
gradient through the UNet instead (AMG's exact gradient, for fired samples only); measured in Finding 14, it did not
pay on the bundled model.

Its knobs travel with the classifier: `cpsample calibrate` writes them to calibration.json in the classifier's
folder, and `GuardSpec` (sampling/spec.py, the one reader of that file) fills the knobs left out from it for every
command that guards with that classifier. Where the calibration chose two stages (`calibrate --early-classifier`, a
"two_stage" entry), `--guard cpsample` with no knob given builds the two-stage guard (staged.py); `one_stage=true`,
or any knob given, keeps the paper's rule. This file is the push only: it reads and writes no file.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from cpsample.models.bundle import resolve_model_dir
from cpsample.models.classifier import TimeClassifier, load_classifier, trained_window
from cpsample.models.pretrained import Classifier
from cpsample.sampling.guards.base import (
    Denoise,
    Guard,
    GuardContext,
    GuardOptions,
    as_eps,
    context_model,
    move_network,
    option,
    unconditional_denoiser,
)

# For a classifier nobody calibrated: the paper's LSUN Church setting (said once per classifier when used).
UNCALIBRATED = {"alpha": 0.1, "scale": 10.0, "tau": 0.001, "max_t": None}
# For a latent (Stable Diffusion) classifier nobody calibrated: the paper's Table 2 setting (section 4.2), whose scale
# is measured in the VAE latents' units; the pixel setting above barely moves a latent.
LATENT_UNCALIBRATED = {"alpha": 0.5, "scale": 2000.0, "tau": 0.001, "max_t": None}
CHECK_EVERY_STEP = 10**9  # a max_t above every timestep: the paper's rule, whatever a calibration says
# The bfloat16 screen clears a sample when its smaller label probability is at least SCREEN_MARGIN * alpha. Its log p
# stays within 0.27 of float32's while sampling the bundled model (log 2 = 0.69 of room), so the float32 check that
# follows
# sees every sample that can fire (bench/README.md, Finding 13).
SCREEN_MARGIN = 2.0


@dataclass(frozen=True)
class CPSampleOptions(GuardOptions):
    """Each knob of UNCALIBRATED left as None comes from the classifier's calibration.json, else from UNCALIBRATED;
    max_push left as None is uncapped (a two-stage calibration carries its own cap)."""

    calibrated = ("alpha", "scale", "tau", "max_t")
    variants = {"two_stage": "cpsample-staged"}  # with no knob given, a calibration's two stages are the default

    alpha: float | None = option(
        None, "Guide a sample when p(y | x_t) > 1 - alpha for either label.", min=0.0, max=0.5
    )
    scale: float | None = option(None, "Guidance scale s of the push away from the confident label.", min=0.0)
    tau: float | None = option(
        None, "tau in log(tau + p): keeps the gradient finite where p is 0.", min=0.0, min_open=True
    )
    max_t: int | None = option(
        None, "Check the classifier only at timesteps t <= max_t (a huge value: every step).", min=0
    )
    min_t: int = option(0, "Check the classifier only at timesteps t >= min_t.", min=0)
    adaptive: bool = option(
        False,
        "Push each guided sample only as far as needed to bring its confidence back to "
        "1 - alpha (linearised DDIM step), with scale as the cap.",
    )
    denoised: bool = option(
        False,
        "Judge the denoised estimate x0_hat (at t = 0) instead of x_t; push = s sqrt(1 - abar) "
        "/ sqrt(abar) grad_x0 log(tau + p). Selective with a --negatives classifier.",
    )
    jacobian: bool = option(
        False,
        "With denoised=true: follow x0_hat's gradient back to x_t through the UNet (its "
        "Jacobian, as AMG does) instead of holding eps fixed. Moves x_t only where the "
        "model's estimate can move; costs a UNet forward and backward pass per fired "
        "sample. Measured on the bundled model: no better protection for its cost.",
    )
    max_push: float | None = option(
        None,
        "Cap each guided sample's push (its change to eps) at this root-mean-square, "
        "in units of eps (whose RMS is about 1). The classifier's gradient is "
        "heavy-tailed: a few uncapped pushes wreck their samples. None: uncapped, the "
        "paper's rule.",
        min=0.0,
        min_open=True,
    )
    cap_x0: bool = option(
        False,
        "Measure max_push on the denoised estimate instead of eps: a push d to eps moves "
        "x0_hat by sqrt(1 - abar_t) / sqrt(abar_t) d, so the cap on eps becomes max_push sqrt(abar_t) "
        "/ sqrt(1 - abar_t) (loose at low t, tight at high t). Measured: no better than the cap on eps.",
    )
    smooth_push: float | None = option(
        None,
        "Low-pass each push with a Gaussian of this standard deviation in pixels "
        "before capping. None: as it is. Measured not to pay: the push is already "
        "smooth.",
        min=0.0,
        min_open=True,
        unit="width in pixels",
    )
    one_stage: bool = option(
        False,
        "The paper's one-stage rule even where the classifier's calibration chose two stages "
        "(cpsample-staged); any other knob given also means one stage.",
    )

    def check(self) -> None:  # (each knob's own range is declared with it above, and checked by GuardOptions)
        if self.max_t is not None and self.min_t > self.max_t:
            raise ValueError(f"--min-t must be a timestep in [0, max_t], got {self.min_t} (max_t {self.max_t})")
        if self.cap_x0 and self.max_push is None:
            raise ValueError("cap_x0=true says where max_push is measured; give max_push too")
        if self.adaptive and self.denoised:
            raise ValueError("adaptive pushes are computed for x_t; they cannot be combined with denoised=true")
        if self.jacobian and not self.denoised:
            raise ValueError("jacobian=true follows x0_hat's gradient through the UNet; it needs denoised=true")

    @classmethod
    def uncalibrated(cls, latent: bool) -> dict:
        return LATENT_UNCALIBRATED if latent else UNCALIBRATED


class CPSampleGuard(Guard):
    name = "cpsample"
    Options = CPSampleOptions
    uses_classifier = True

    def __init__(
        self,
        classifier: TimeClassifier,
        alpha: float = UNCALIBRATED["alpha"],
        scale: float = UNCALIBRATED["scale"],
        tau: float = UNCALIBRATED["tau"],
        max_t: int | None = None,
        adaptive: bool = False,
        denoised: bool = False,
        folder: Path | None = None,
        min_t: int = 0,
        max_push: float | None = None,
        screen: bool = True,
        denoiser: Denoise | None = None,
        unet: torch.nn.Module | None = None,
        cap_x0: bool = False,
        smooth_push: float | None = None,
        trained_max_t: int | None = None,
    ):
        """Check the classifier only at timesteps min_t <= t <= max_t (max_t None: every step, the paper's rule), and
        never above trained_max_t, the highest t the classifier was trained at (None: every t): there it would judge
        inputs it never saw (unless it judges the denoised estimate, at t = 0).
        Above the highest t at which a classifier can be over-confident, the check costs time and never fires.
        screen: pass every sample through a bfloat16 copy of the check first, where the hardware runs bfloat16 fast
        (`_screens_fast`), and check in float32 only those it does not clear (`_check`).
        denoiser: a differentiable (x_t, t) -> eps; given (with denoised=True), fired samples' gradients go through it
        (the `jacobian` option). unet: the network behind `denoiser`, moved along with the guard by `to`."""
        super().__init__()
        # the one validation of the knobs
        CPSampleOptions(
            alpha=alpha,
            scale=scale,
            tau=tau,
            max_t=max_t,
            min_t=min_t,
            adaptive=adaptive,
            denoised=denoised,
            max_push=max_push,
            jacobian=denoiser is not None,
            cap_x0=cap_x0,
            smooth_push=smooth_push,
        )
        self.classifier = classifier.eval().requires_grad_(False)
        self.alpha, self.scale, self.tau, self.max_t, self.min_t = alpha, scale, tau, max_t, min_t
        self.adaptive, self.denoised, self.max_push = adaptive, denoised, max_push
        self.cap_x0, self.smooth_push = cap_x0, smooth_push
        self.screen, self.denoiser = screen, denoiser
        self.unet = unet
        self.folder = folder  # where the classifier was loaded from (its schedule, split and calibration), if known
        self.trained_max_t = None if denoised else trained_max_t
        self.calibration: str | None = None  # where the knobs came from (from_options says; None: given to __init__)

    @classmethod
    def from_options(cls, options: CPSampleOptions, context: GuardContext) -> "Guard":
        """The classifier from context.classifier (a folder, "bundled", a Classifier or a TimeClassifier); the knobs
        as resolved by `GuardSpec` (alpha, scale and tau given)."""
        missing = [name for name in ("alpha", "scale", "tau") if getattr(options, name) is None]
        if missing:
            raise ValueError(f"CPSample's {', '.join(missing)} are unresolved: build the guard through GuardSpec")
        model, folder = load_guard_classifier(
            "bundled" if context.classifier is None else context.classifier, context.device
        )
        unet, denoiser = unconditional_denoiser(context_model(context)) if options.jacobian else (None, None)
        return cls(
            model,
            alpha=options.alpha,
            scale=options.scale,
            tau=options.tau,
            max_t=options.max_t,
            min_t=options.min_t,
            adaptive=options.adaptive,
            denoised=options.denoised,
            folder=folder,
            max_push=options.max_push,
            denoiser=denoiser,
            unet=unet,
            cap_x0=options.cap_x0,
            smooth_push=options.smooth_push,
            trained_max_t=trained_window(folder),
        )

    def describe(self) -> dict:
        return {
            "classifier": "in-memory" if self.folder is None else str(self.folder),
            "calibration": self.calibration or "given",
        }

    def to(self, device, dtype):
        for network in (self.unet, self.classifier):
            if network is not None:
                move_network(network, device, dtype)
        return self

    def settings(self) -> dict:
        settings = {"guard": self.name, "alpha": self.alpha, "scale": self.scale, "tau": self.tau, "max_t": self.max_t}
        # Only the variants in use are named, so records of the paper's rule stay as they were.
        return {
            **settings,
            **({"min_t": self.min_t} if self.min_t else {}),
            **({"max_push": self.max_push} if self.max_push is not None else {}),
            **({"cap_x0": True} if self.cap_x0 else {}),
            **({"smooth_push": self.smooth_push} if self.smooth_push is not None else {}),
            **{name: True for name in ("adaptive", "denoised") if getattr(self, name)},
            **({"jacobian": True} if self.denoiser is not None else {}),
            **({"trained_max_t": self.trained_max_t} if self.trained_max_t is not None else {}),
        }

    @property
    def checked_up_to(self) -> float:
        """The highest timestep the classifier is checked at: max_t, within the window it was trained on."""
        windows = [window for window in (self.max_t, self.trained_max_t) if window is not None]
        return min(windows, default=math.inf)

    def correct(self, predictions, x_t, t, abar_t):
        """Subtract the push from every eps of this step (both CFG halves alike, so the mix keeps it whole)."""
        eps = torch.stack(predictions).mean(0) if self.denoised else None  # (CFG: x0_hat of the halves' mean)
        push = self.push(x_t, t, abar_t, predictions[0].dtype, eps)
        if push is None:
            return predictions
        rows, change = push
        return tuple(_minus_rows(eps, rows, change) for eps in predictions)

    def push(self, x_t, t, abar_t, dtype, eps=None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rows, s * sqrt(1 - abar_t) * grad log(tau + p_target)) for the over-confident samples; None if there are
        none.

        eps: this step's eps, needed (and only used) when the classifier judges the denoised estimate."""
        if int(t.max()) > self.checked_up_to or int(t.min()) < self.min_t:
            self.record(p1=torch.full((len(x_t),), math.nan), fired=torch.zeros(len(x_t), dtype=torch.bool))
            return None
        classifier_dtype = next(self.classifier.parameters()).dtype
        sigma, root_abar = (1.0 - abar_t).sqrt(), abar_t.sqrt()
        step_t = t
        if self.denoised:  # judge x0_hat as a clean image; d x0_hat / d x_t = 1 / sqrt(abar_t) with eps held fixed
            judged, t = (x_t - sigma * eps) / root_abar, torch.zeros_like(t)
        else:
            judged = x_t
        # The cheap part runs for every sample: is the classifier over-confident? No graph is built here.
        probs = self._check(judged.to(classifier_dtype), t)
        # Over-confident for label 1 means p(y=0) < alpha: guide towards 0, and vice versa.
        target = (probs[:, 1] < probs[:, 0]).long()  # the less likely label
        fired = probs.gather(1, target[:, None]).squeeze(1) < self.alpha
        self.record(p1=probs[:, 1], fired=fired)
        if not bool(fired.any()):
            return None
        # The gradient is paid for only by the samples that need it.
        rows = fired.nonzero().squeeze(1)
        if self.denoiser is not None:
            grad = self._gradient_through_denoiser(
                x_t[rows], step_t[rows], target[rows], sigma, root_abar, classifier_dtype
            )
            return rows, self._shaped(self.scale * sigma.to(dtype) * grad.to(dtype), abar_t)
        with torch.enable_grad():
            x_in = judged[rows].detach().to(classifier_dtype).requires_grad_(True)
            p_target = self.classifier(x_in, t[rows]).float().softmax(dim=-1).gather(1, target[rows, None]).squeeze(1)
            grad = torch.autograd.grad(torch.log(self.tau + p_target).sum(), x_in)[0].to(dtype)
        if self.denoised:
            grad = grad / root_abar.to(dtype)
        adaptive = self._just_enough(grad, p_target.detach(), abar_t) if self.adaptive else None
        scale = self.scale if adaptive is None else _per_sample(adaptive.to(dtype), grad)
        return rows, self._shaped(scale * sigma.to(dtype) * grad, abar_t)

    def _gradient_through_denoiser(self, x_t, t, target, sigma, root_abar, classifier_dtype) -> torch.Tensor:
        """grad_{x_t} log(tau + p(target | x0_hat(x_t))) with x0_hat's dependence on x_t through the UNet (AMG's exact
        gradient): J^T grad_x0, where J = d x0_hat / d x_t is about the posterior covariance of x0 given x_t, so the
        push moves x_t only in directions the model would turn into a different image."""
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(True)
            x0_hat = (x_in - sigma.to(x_in.dtype) * as_eps(self.denoiser(x_in, t))) / root_abar.to(x_in.dtype)
            logits = self.classifier(x0_hat.to(classifier_dtype), torch.zeros_like(t)).float()
            p_target = logits.softmax(dim=-1).gather(1, target[:, None]).squeeze(1)
            return torch.autograd.grad(torch.log(self.tau + p_target).sum(), x_in)[0]

    def _check(self, judged: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """p(y | judged, t) in float32 for every sample, without a graph. Where bfloat16 runs much faster
        (_screens_fast) a bfloat16 pass screens first, and only the samples it cannot clear (smaller probability below
        SCREEN_MARGIN * alpha) are checked in float32; the others keep the screen's probabilities (they cannot
        fire). At alpha >= 0.5 / SCREEN_MARGIN the screen could clear nothing, so it is skipped."""
        screened = (
            self.screen
            and judged.dtype == torch.float32
            and SCREEN_MARGIN * self.alpha < 0.5
            and _screens_fast(judged.device)
        )
        with torch.no_grad():
            if not screened:
                return self.classifier(judged, t).float().softmax(dim=-1)
            with torch.autocast(judged.device.type, dtype=torch.bfloat16):
                probs = self.classifier(judged, t).float().softmax(dim=-1)
            doubtful = (probs.min(dim=1).values < SCREEN_MARGIN * self.alpha).nonzero().squeeze(1)
            if len(doubtful):
                probs[doubtful] = self.classifier(judged[doubtful], t[doubtful]).float().softmax(dim=-1)
        return probs

    def _shaped(self, change: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
        """The push as applied: low-passed (smooth_push), then capped (max_push, on eps or on x0_hat)."""
        if self.smooth_push is not None:
            change = gaussian_blur(change, self.smooth_push)
        cap = self.max_push
        if cap is not None and self.cap_x0:
            cap = cap * float((abar_t / (1.0 - abar_t)).sqrt().max())  # (every sample shares the step's t)
        return self._capped(change, cap)

    @staticmethod
    def _capped(change: torch.Tensor, cap: float | None) -> torch.Tensor:
        """Each sample's push shrunk to RMS <= cap (direction kept; None: unchanged). Uncapped, the push's RMS is
        heavy-tailed: on
        the fine-tuned model of bench/README Finding 12 its median is 0.03 but its 99th percentile 17 times eps's own
        RMS, and those few pushes turn their samples into speckle."""
        if cap is None:
            return change
        rms = change.float().flatten(1).pow(2).mean(1).sqrt()
        shrink = (cap / rms.clamp_min(1e-12)).clamp(max=1.0)
        return change * _per_sample(shrink.to(change.dtype), change)

    def _just_enough(self, grad, p_target, abar_t) -> torch.Tensor | None:
        """Per sample, the scale (at most `scale`) whose push raises log(tau + p_target) back to log(tau + alpha) at
        the next step, to first order. A DDIM step moves x_{t-1} by k = sqrt(abar_next / abar_t) sigma_t - sigma_next
        per unit of eps removed, so a push s sigma_t g gains s sigma_t k |g|^2. None when the run's noise levels are
        unknown (a lone denoiser call, as in membership inference): the fixed scale then applies."""
        if self.noise_levels is None or self.step_index >= len(self.noise_levels):
            return None
        abar_t = float(abar_t)
        next_index = self.step_index + 1
        abar_next = self.noise_levels[next_index] if next_index < len(self.noise_levels) else 1.0
        sigma, sigma_next = math.sqrt(1.0 - abar_t), math.sqrt(1.0 - abar_next)
        k = math.sqrt(abar_next / abar_t) * sigma - sigma_next
        gain = sigma * k * grad.float().flatten(1).pow(2).sum(1)
        deficit = math.log(self.tau + self.alpha) - torch.log(self.tau + p_target)
        return (deficit.clamp_min(0) / gain.clamp_min(1e-12)).clamp(max=self.scale)


def load_guard_classifier(
    spec: "str | Path | Classifier | TimeClassifier", device: str, part: str = "classifier"
) -> tuple[TimeClassifier, Path | None]:
    """(classifier, its folder or None) from a folder, "bundled" (the shipped `part`), a Classifier or a
    TimeClassifier."""
    if isinstance(spec, TimeClassifier):
        return spec, None
    if isinstance(spec, Classifier):
        return spec.model.to(device), spec.folder
    folder = resolve_model_dir(spec, part)
    return load_classifier(folder, device), folder


def _screens_fast(device: torch.device) -> bool:
    """Whether bfloat16 convolutions run much faster than float32 here (a CUDA GPU, or a CPU with AMX); elsewhere a
    bfloat16 screen costs more than the float32 checks it saves. With AVX512-BF16 alone (an AMD EPYC) the RGB check ran
    only 7% faster in bfloat16, and the screen made the one-stage guard's check 17-28% slower (bench/README,
    Finding 29)."""
    return _bfloat16_native(device.type)


@functools.lru_cache(maxsize=None)
def _bfloat16_native(device_type: str) -> bool:
    """_screens_fast's hardware probe, once per device type (the guard asks at every checked step)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def gaussian_blur(images: torch.Tensor, width: float) -> torch.Tensor:
    """Each channel of (N, C, H, W) images smoothed by a Gaussian of standard deviation `width` pixels (the edges
    repeated)."""
    radius = max(1, math.ceil(3 * width))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    line = torch.exp(-0.5 * (offsets / width) ** 2)
    kernel = torch.outer(line, line) / line.sum() ** 2
    channels = images.shape[1]
    weight = kernel.to(images.dtype).expand(channels, 1, -1, -1)
    padded = torch.nn.functional.pad(images, (radius,) * 4, mode="replicate")
    return torch.nn.functional.conv2d(padded, weight, groups=channels)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per sample, shaped to broadcast over each sample of `like` (N, C, H, W)."""
    return values.view(-1, *[1] * (like.ndim - 1))


def _minus_rows(eps: torch.Tensor, rows: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    adjusted = eps.clone()
    adjusted[rows] = eps[rows] - change
    return adjusted
