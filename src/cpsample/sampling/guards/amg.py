"""Anti-Memorization Guidance (AMG, Chen et al. 2024): detect a looming copy at every step and steer away from it.

At each step the guard forms the predicted clean image x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), finds
its nearest training image (cosine similarity of features, exact search over an index built once: faiss where
installed) and,
only for samples whose similarity sigma_t exceeds the threshold, changes eps:
- dissimilarity guidance  G_sim = c3 * sqrt(1 - abar_t) * grad_{x_t} sigma_t   (pushes x0 away from the neighbour);
- despecification (class-conditional models sampled with CFG) G_spe = -s1 * (eps_cond - eps_uncond) with
  s1 = clip(c1 * sigma_t, 0, s0 - floor): the effective CFG scale s0 drops towards `floor` (paper: 1, i.e. plain
  conditional sampling; a floor below 0 turns it into guidance away from the class).
eps_hat = eps + 1[sigma_t > threshold] * (G_sim + G_spe); samples below the threshold are left exactly as they are.
The paper's third term, duplication guidance G_dup = -s2 (eps(x_t, y_N) - eps_uncond) with the neighbour's own
condition y_N, needs an extra conditional denoiser call per step and is not implemented.

grad_{x_t} sigma_t = J^T grad_{x0} sigma_t, with J = d x0 / d x_t. Two ways to get J:
- `denoiser` given (a callable (x_t, t) -> eps, differentiable): J through the network, as in the paper. Costs one
  more forward and backward pass of the denoiser at every step where some sample fires;
- no denoiser: J taken as the identity (the gradient with respect to the predicted x0). No extra network call, but
  cruder: on the 16x16 MNIST model it costs more sample quality for the same protection.
(Holding eps fixed instead would give J = I / sqrt(abar_t), which explodes at high noise where the true J is small.)

Features: pixels minus each image's mean by default (the same view as `cpsample evaluate --features pixels`); any
differentiable torch function (N, C, H, W) -> (N, D) can be passed instead.

Cost, and why the CPSample paper calls AMG impractical outside research: the guard must hold the *training set*
at sampling time -- its feature matrix (N_train x D floats, here as a flat index and as a torch tensor) -- and
runs a nearest-neighbour search over it for every sample at every step. CPSample needs only its classifier.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cpsample.evaluation.neighbours import flat_index
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

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
logger = logging.getLogger(__name__)

# A gate, not the near-copy verdict: guide before a sample reaches the line the evaluation counts (pixels: 0.98,
# cpsample.evaluation.NEAR_COPY_THRESHOLDS).
DEFAULT_THRESHOLD = 0.95
DEFAULT_SIM_SCALE = 1000.0  # c3: with J through the denoiser, removes near-copies of the 16x16 MNIST model
DEFAULT_SPEC_SCALE = 10.0  # c1
DEFAULT_SPEC_FLOOR = 1.0  # paper: despecification never drops CFG below plain conditional sampling


def centred_pixels(images: torch.Tensor) -> torch.Tensor:
    """Each image flattened, minus its mean: cosine similarity then compares shape, not brightness."""
    flat = images.flatten(1)
    return flat - flat.mean(dim=1, keepdim=True)


FEATURES: dict[str, FeatureFn] = {"pixels": centred_pixels}


@dataclass(frozen=True)
class AMGOptions(GuardOptions):
    threshold: float = option(
        DEFAULT_THRESHOLD, "Guide when the predicted x0's cosine to its nearest training image exceeds this."
    )
    sim_scale: float = option(DEFAULT_SIM_SCALE, "Dissimilarity guidance scale c3.")
    spec_scale: float = option(DEFAULT_SPEC_SCALE, "Despecification scale c1 (class-conditional models under CFG).")
    spec_floor: float = option(DEFAULT_SPEC_FLOOR, "Lowest effective CFG scale despecification may reach.")
    despecify: bool = option(True, "Lower the CFG scale of samples about to copy (conditional models).")
    exact_gradient: bool = option(
        True, "d x0 / d x_t through the model's UNet (False: the identity, cheaper and cruder; always in a pipeline)."
    )
    features: str = option("pixels", f"Feature space of the similarity: {', '.join(FEATURES)}.")

    def check(self) -> None:
        check_threshold(self.threshold)
        if self.sim_scale < 0 or self.spec_scale < 0:
            raise ValueError(
                f"guidance scales must be non-negative, got sim_scale={self.sim_scale}, spec_scale={self.spec_scale}"
            )
        if self.features not in FEATURES:
            raise ValueError(f"unknown AMG features {self.features!r}; choose one of {', '.join(FEATURES)}")


def check_threshold(threshold: float) -> None:
    """The threshold is a cosine similarity: at 1 or above the guard never acts, at -1 or below it always does."""
    if not -1.0 < float(threshold) <= 1.0:  # 1: the guard never acts (a switch-off kept for comparisons)
        raise ValueError(
            f"AMG's threshold (--option threshold=) is a cosine similarity and must lie in (-1, 1], got {threshold}"
        )


class AMGGuard(Guard):
    name = "amg"
    Options = AMGOptions

    def __init__(
        self,
        training_images: np.ndarray | torch.Tensor,
        threshold: float = DEFAULT_THRESHOLD,
        sim_scale: float = DEFAULT_SIM_SCALE,
        spec_scale: float = DEFAULT_SPEC_SCALE,
        spec_floor: float = DEFAULT_SPEC_FLOOR,
        despecify: bool = True,
        features: str | FeatureFn = "pixels",
        denoiser: Denoise | None = None,
        unet: torch.nn.Module | None = None,
    ):
        """unet: the network behind `denoiser`, moved along with the guard by `to`."""
        super().__init__()
        check_threshold(threshold)
        if sim_scale < 0 or spec_scale < 0:
            raise ValueError(
                f"guidance scales must be non-negative, got sim_scale={sim_scale}, spec_scale={spec_scale}"
            )
        self.threshold, self.sim_scale, self.spec_scale = float(threshold), float(sim_scale), float(spec_scale)
        self.spec_floor, self.despecify = float(spec_floor), despecify
        self.feature_fn, self.feature_name = _feature_fn(features)
        self.reference, self.index = self._build_index(training_images)
        self.denoiser = denoiser
        self.unet = unet
        self._cfg: tuple[torch.Tensor, torch.Tensor, float] | None = None

    @classmethod
    def from_options(cls, options: AMGOptions, context: GuardContext) -> "AMGGuard":
        """AMG against the members of context.model (its training images are needed at sampling time), or against
        context.members (a pipeline's member latents), where d x0 / d x_t is taken as the identity: a guard inside
        a pipeline cannot follow gradients through its UNet."""
        settings = {name: getattr(options, name) for name in options.names() if name != "exact_gradient"}
        if context.model is None and context.members is not None:
            logger.info("AMG in latent space: nearest member latent, d x0 / d x_t taken as the identity")
            guard = cls(context.members(), **settings)
            guard.feature_name = f"{guard.feature_name} of latents"  # (centred VAE latents, not decoded pixels)
            return guard
        model = context_model(context)
        unet, denoiser = unconditional_denoiser(model) if options.exact_gradient else (None, None)
        return cls(model.members.images, denoiser=denoiser, unet=unet, **settings)

    def _build_index(self, training_images) -> tuple[torch.Tensor, object]:
        images = torch.as_tensor(np.asarray(training_images, dtype=np.float32))
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(
                f"AMG needs the training images as a non-empty (N, C, H, W) array, got shape {tuple(images.shape)}"
            )
        with torch.no_grad():
            reference = F.normalize(self.feature_fn(images).float(), dim=1)
        if reference.ndim != 2:
            raise ValueError(f"the feature function must return (N, D) features, got shape {tuple(reference.shape)}")
        index = flat_index(
            reference.shape[1], "ip"
        )  # exact: inner product of unit vectors = cosine (faiss if installed)
        index.add(np.ascontiguousarray(reference.numpy()))
        return reference, index

    def settings(self) -> dict:
        return {
            "guard": self.name,
            "threshold": self.threshold,
            "sim_scale": self.sim_scale,
            "spec_scale": self.spec_scale,
            "spec_floor": self.spec_floor,
            "despecify": self.despecify,
            "features": self.feature_name,
            "training_images": int(self.index.ntotal),
            "jacobian": "denoiser" if self.denoiser is not None else "identity",
        }

    def to(self, device, dtype):
        self.reference = self.reference.to(device=device)  # stays float32: similarities near 1 need the precision
        if self.unet is not None:
            move_network(self.unet, device, dtype)
        return self

    def begin_step(self, index: int, count: int) -> None:
        super().begin_step(index, count)
        self._cfg = None

    def combine(self, eps_cond, eps_uncond, guidance_scale, t):
        """Plain CFG; the two halves are kept for despecification, which needs this step's similarity first."""
        self._cfg = (eps_cond, eps_uncond, float(guidance_scale))
        return super().combine(eps_cond, eps_uncond, guidance_scale, t)

    def adjust(self, eps, x_t, t, abar_t):
        abar = abar_t.float()
        with torch.no_grad():
            x0 = predicted_x0(x_t.float(), eps.float(), abar)
            similarity, neighbour = self._nearest(x0)
        fired = similarity > self.threshold
        self.record(similarity=similarity, fired=fired, neighbour=neighbour)
        if not bool(fired.any()):
            return eps
        grad = self._gradient_wrt_x0(x0, neighbour, fired)
        if self.denoiser is not None:
            grad = self._through_denoiser(x_t, t, abar, grad)
        guidance = self.sim_scale * (1.0 - abar).sqrt() * grad  # G_sim
        if self.despecify and self._cfg is not None:
            guidance = guidance + self._despecification(similarity)
        guided = (eps.float() + guidance).to(eps.dtype)
        return torch.where(fired[:, None, None, None], guided, eps)

    def _nearest(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sigma_t (cosine of x0's features to its nearest training image's) and that image's row."""
        features = F.normalize(self.feature_fn(x0).float(), dim=1)
        _, found = self.index.search(np.ascontiguousarray(features.cpu().numpy()), 1)
        neighbour = torch.from_numpy(found[:, 0]).to(self.reference.device)
        similarity = (features * self.reference[neighbour].to(features.device)).sum(dim=1)
        return similarity, neighbour.to(x0.device)

    def _gradient_wrt_x0(self, x0: torch.Tensor, neighbour: torch.Tensor, fired: torch.Tensor) -> torch.Tensor:
        """grad_{x0} sigma_t for fired samples (zero rows elsewhere), the neighbour held fixed."""
        with torch.enable_grad():
            x0 = x0.detach().requires_grad_(True)
            features = F.normalize(self.feature_fn(x0).float(), dim=1)
            similarity = (features * self.reference[neighbour.to(self.reference.device)].to(x0.device)).sum(dim=1)
            return torch.autograd.grad(similarity[fired].sum(), x0)[0]

    def _through_denoiser(
        self, x_t: torch.Tensor, t: torch.Tensor, abar: torch.Tensor, grad_x0: torch.Tensor
    ) -> torch.Tensor:
        """J^T grad_x0 with J = d x0 / d x_t of the denoiser's own prediction (a vector-Jacobian product)."""
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(True)
            x0 = predicted_x0(x_in.float(), as_eps(self.denoiser(x_in, t)).float(), abar)
            return torch.autograd.grad(x0, x_in, grad_outputs=grad_x0)[0].float()

    def _despecification(self, similarity: torch.Tensor) -> torch.Tensor:
        """G_spe = -s1 (eps_cond - eps_uncond), s1 = clip(c1 sigma_t, 0, s0 - floor), per sample."""
        eps_cond, eps_uncond, scale = self._cfg
        s1 = (self.spec_scale * similarity).clamp(min=0.0, max=max(scale - self.spec_floor, 0.0))
        return -s1[:, None, None, None] * (eps_cond - eps_uncond).float()


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    return (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()


def _feature_fn(features: str | FeatureFn) -> tuple[FeatureFn, str]:
    if callable(features):
        return features, getattr(features, "__name__", type(features).__name__)
    if features not in FEATURES:
        raise ValueError(
            f"unknown AMG features {features!r}; choose one of {', '.join(FEATURES)} "
            "or pass a differentiable torch function"
        )
    return FEATURES[features], features
