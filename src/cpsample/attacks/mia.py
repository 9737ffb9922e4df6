"""Membership inference against a diffusion denoiser, plain or guarded: does the model give itself away on its training
images?

Two white-box attacks, both scoring each image by a reconstruction error (lower = more likely a member):

- loss attack (Matsumoto et al. 2023; CPSample paper Alg. 1): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with fresh
  Gaussian eps, score = ||eps - eps_hat(x_t, t)||^2 / d, averaged over a few noise draws, at each chosen t.
- PIA (Kong et al. 2024): eps0 = eps_hat(x0, 0) replaces the random noise, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t)
eps0,
  score = ||eps0 - eps_hat(x_t, t)||_p / d^(1/p) with p = 4, t = 200: deterministic, two queries per image.

"eps_hat" is the denoiser's eps, passed through `guard.adjust` when a guard is given, so the same attack measures how
much CPSample (or any guard) hides membership. Each score set is summarised by ROC AUC, TPR at 1% / 0.1% FPR and the
paper's one-sided Z-test (see `cpsample.attacks.metrics`). `run_mia` (attacks/membership.py) is the one-call entry
point:

    results = run_mia(model="bundled", guard="cpsample")
    results["loss"].auc, results["pia"].auc
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from cpsample.attacks.metrics import Separation, separation
from cpsample.data import ImageSet
from cpsample.sampling.guards import Guard
from cpsample.sampling.guards.base import guided_eps, move_network

ATTACKS = ("loss", "pia")
DEFAULT_LOSS_TIMESTEPS = (100, 200, 300)
DEFAULT_PIA_TIMESTEPS = (200,)
PIA_NORM = 4.0
DEFAULT_DRAWS = 4

Images = "ImageSet | np.ndarray | torch.Tensor"


# --- results ----------------------------------------------------------------------------------------------------


@dataclass
class AttackResult:
    """One attack's scores and their separation at every t; `best` is the t with the highest AUC."""

    attack: str
    n_members: int
    n_nonmembers: int
    per_t: dict[int, Separation]
    member_scores: dict[int, np.ndarray]
    nonmember_scores: dict[int, np.ndarray]
    settings: dict = field(default_factory=dict)
    guard_fired: dict[int, dict[str, float]] = field(
        default_factory=dict
    )  # t -> share of members / non-members guided

    @property
    def best_t(self) -> int:
        return max(self.per_t, key=lambda t: self.per_t[t].auc)

    @property
    def best(self) -> Separation:
        return self.per_t[self.best_t]

    @property
    def auc(self) -> float:
        """AUC at the best t: the attacker's view, who may pick the most revealing noise level."""
        return self.best.auc

    def to_dict(self, with_scores: bool = False) -> dict:
        record = {
            "attack": self.attack,
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "best_t": self.best_t,
            "best": self.best.to_dict(),
            "per_t": {str(t): s.to_dict() for t, s in self.per_t.items()},
            "settings": self.settings,
        }
        if self.guard_fired:
            record["guard_fired"] = {str(t): shares for t, shares in self.guard_fired.items()}
        if with_scores:
            record["member_scores"] = {str(t): v.tolist() for t, v in self.member_scores.items()}
            record["nonmember_scores"] = {str(t): v.tolist() for t, v in self.nonmember_scores.items()}
        return record


# --- the (guarded) noise predictor -----------------------------------------------------------------------------


class EpsPredictor:
    """eps_hat(x_t, t) for a whole batch at one t: the denoiser's eps, then the guard's adjustment if any.

    The denoiser runs under no_grad; the guard does not, because CPSample needs the classifier's input gradient.
    """

    def __init__(self, denoiser: Callable, alphas_cumprod: torch.Tensor, guard: Guard | None = None):
        self.denoiser = denoiser
        self.alphas_cumprod = alphas_cumprod
        self.num_train_timesteps = len(alphas_cumprod)
        self.guard = guard
        self.fired: dict[int, list[np.ndarray]] = {}  # t -> per-sample "guard changed eps" flags, when the guard says
        # A text-to-image UNet's conditioning for the rows being scored (their captions' embeddings); None: none.
        self.context: torch.Tensor | None = None

    def __call__(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        condition = {} if self.context is None else {"encoder_hidden_states": self.context}
        with torch.no_grad():
            output = self.denoiser(x_t, t_batch, **condition)
        eps = getattr(output, "sample", output)  # diffusers models wrap the tensor, plain callables may not
        if eps.shape != x_t.shape:
            raise ValueError(
                f"the denoiser returned shape {tuple(eps.shape)} for input {tuple(x_t.shape)}; "
                "an eps-predicting model must return its input's shape"
            )
        if self.guard is not None:
            eps = self._guarded(eps, x_t, t_batch, t)
        return eps.detach().float()

    def _guarded(self, eps, x_t, t_batch, t: int) -> torch.Tensor:
        self.guard.reset()  # keep its trace to this one call
        # Tell step-aware guards where this t would fall in a full-length sampling run.
        self.guard.begin_step(self.num_train_timesteps - 1 - t, self.num_train_timesteps)
        abar_t = self.alphas_cumprod[t].to(device=x_t.device, dtype=torch.float32)
        eps = guided_eps(self.guard, eps, x_t, t_batch, abar_t)
        if "fired" in self.guard.trace:
            self.fired.setdefault(t, []).append(np.concatenate(self.guard.trace["fired"]).ravel())
        return eps

    def fired_share(self, t: int) -> float | None:
        flags = self.fired.get(t)
        return None if not flags else float(np.concatenate(flags).mean())


# --- attacks ----------------------------------------------------------------------------------------------------


def loss_attack(
    denoiser,
    schedule,
    members: Images,
    nonmembers: Images,
    *,
    guard: Guard | None = None,
    timesteps: Sequence[int] = DEFAULT_LOSS_TIMESTEPS,
    draws: int = DEFAULT_DRAWS,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    progress: bool = True,
    contexts: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> AttackResult:
    """Loss attack (paper Alg. 1): per-image mean of ||eps - eps_hat(x_t, t)||^2 / d over `draws` noise draws.

    Row i of the member set and row i of the non-member set get the same noise (seeded by seed, draw, i), so the
    two sets differ only in their images, and a score never depends on batch_size.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    timesteps = check_timesteps(timesteps, schedule, minimum=0)

    def score_batch(eps_hat: EpsPredictor, x0: torch.Tensor, rows: range) -> dict[int, torch.Tensor]:
        noises = [row_noise(seed, draw, rows, x0.shape[1:]).to(x0.device) for draw in range(draws)]
        scores = {}
        for t in timesteps:
            a, b = _signal_noise(eps_hat, t)
            errors = [_mean_power(noise - eps_hat(a * x0 + b * noise.to(x0.dtype), t), 2.0) for noise in noises]
            scores[t] = torch.stack(errors).mean(dim=0)
        return scores

    settings = {
        "timesteps": list(timesteps),
        "draws": draws,
        "seed": seed,
        "score": "mean over draws of ||eps - eps_hat(x_t, t)||^2 / d",
    }
    return _run_attack(
        "loss",
        score_batch,
        denoiser,
        schedule,
        members,
        nonmembers,
        guard,
        batch_size,
        device,
        dtype,
        progress,
        settings,
        contexts,
    )


def pia_attack(
    denoiser,
    schedule,
    members: Images,
    nonmembers: Images,
    *,
    guard: Guard | None = None,
    timesteps: Sequence[int] = DEFAULT_PIA_TIMESTEPS,
    norm: float = PIA_NORM,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    progress: bool = True,
    contexts: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> AttackResult:
    """PIA (Kong et al. 2024): eps0 = eps_hat(x0, 0) is the 'proximal initial' noise; score = ||eps0 - eps_hat(x_t,
    t)||_p / d^(1/p).

    Deterministic: no random noise is drawn, so it needs no seed.
    """
    if norm <= 0:
        raise ValueError(f"the PIA norm p must be positive, got {norm}")
    timesteps = check_timesteps(timesteps, schedule, minimum=1)  # t = 0 would compare eps0 with itself

    def score_batch(eps_hat: EpsPredictor, x0: torch.Tensor, rows: range) -> dict[int, torch.Tensor]:
        eps0 = eps_hat(x0, 0)
        scores = {}
        for t in timesteps:
            a, b = _signal_noise(eps_hat, t)
            x_t = a * x0 + b * eps0.to(x0.dtype)
            scores[t] = _mean_power(eps0 - eps_hat(x_t, t), norm) ** (1.0 / norm)
        return scores

    settings = {"timesteps": list(timesteps), "norm": norm, "score": "||eps_hat(x0,0) - eps_hat(x_t, t)||_p / d^(1/p)"}
    return _run_attack(
        "pia",
        score_batch,
        denoiser,
        schedule,
        members,
        nonmembers,
        guard,
        batch_size,
        device,
        dtype,
        progress,
        settings,
        contexts,
    )


def _run_attack(
    name: str,
    score_batch,
    denoiser,
    schedule,
    members,
    nonmembers,
    guard,
    batch_size,
    device,
    dtype,
    progress,
    settings,
    contexts=None,
) -> AttackResult:
    """Shared frame of both attacks: checks, placement, batching over both sets, and the statistics.

    contexts: (members', non-members') per-image conditioning of a text-to-image UNet, row for row."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    member_images, nonmember_images = check_image_sets(members, nonmembers, denoiser)
    device, dtype = torch.device(device), resolve_dtype(dtype)
    if isinstance(denoiser, torch.nn.Module):
        place_module(denoiser, device, dtype)
    if guard is not None:
        guard.to(device, dtype)
    eps_hat = EpsPredictor(denoiser, schedule.alphas_cumprod.float(), guard)
    bar = tqdm(
        total=len(member_images) + len(nonmember_images),
        desc=f"{name} attack ({_guard_name(guard)})",
        disable=not progress,
        unit="img",
        dynamic_ncols=True,
    )
    member_context, nonmember_context = contexts or (None, None)
    member_scores, member_fired = _score_set(
        score_batch, eps_hat, member_images, member_context, batch_size, device, dtype, bar
    )
    eps_hat.fired.clear()
    nonmember_scores, nonmember_fired = _score_set(
        score_batch, eps_hat, nonmember_images, nonmember_context, batch_size, device, dtype, bar
    )
    bar.close()
    per_t = {t: separation(member_scores[t], nonmember_scores[t]) for t in member_scores}
    fired = {
        t: {"members": member_fired[t], "nonmembers": nonmember_fired[t]} for t in member_fired if t in nonmember_fired
    }
    settings = {
        **settings,
        "guard": guard.settings() if guard is not None else {"guard": "none"},
        "dtype": str(dtype).replace("torch.", ""),
    }
    return AttackResult(
        name, len(member_images), len(nonmember_images), per_t, member_scores, nonmember_scores, settings, fired
    )


def _score_set(score_batch, eps_hat: EpsPredictor, images: torch.Tensor, context, batch_size: int, device, dtype, bar):
    """Scores of one image set per t (float64 numpy), and the share of its images the guard changed per t."""
    collected: dict[int, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        rows = range(start, min(start + batch_size, len(images)))
        x0 = images[rows.start : rows.stop].to(device=device, dtype=dtype)
        if context is not None:
            eps_hat.context = context[rows.start : rows.stop].to(device=device, dtype=dtype)
        for t, scores in score_batch(eps_hat, x0, rows).items():
            collected.setdefault(t, []).append(scores.cpu())
        bar.update(len(rows))
    scores = {t: torch.cat(parts).double().numpy() for t, parts in collected.items()}
    fired = {t: share for t in eps_hat.fired if (share := eps_hat.fired_share(t)) is not None}
    return scores, fired


# --- one call: load a model, pick the images, run the attacks ---------------------------------------------------


def chosen_attacks(attack: str) -> tuple[str, ...]:
    if attack == "both":
        return ATTACKS
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose loss, pia or both")
    return (attack,)


def pick_images(
    members: Sequence[int], nonmembers: Sequence[int], n_members: int | None, n_nonmembers: int | None, seed: int
) -> tuple[list[int], list[int]]:
    """Member and non-member indices to attack: all members (or a random n_members), and as many random non-members."""
    if not members:
        raise ValueError("the model's split lists no members: nothing to attack")
    if not nonmembers:
        raise ValueError(
            "the model's split lists no non-members (it was trained on every image): nothing to compare against"
        )
    rng = np.random.default_rng(seed)
    chosen_members = _random_subset(members, n_members, "members", rng)
    wanted = len(chosen_members) if n_nonmembers is None else n_nonmembers
    # The balanced default quietly shrinks to what there is; an explicit request that cannot be met is an error.
    wanted = min(wanted, len(nonmembers)) if n_nonmembers is None else wanted
    return chosen_members, _random_subset(nonmembers, wanted, "non-members", rng)


def _random_subset(indices: Sequence[int], count: int | None, what: str, rng: np.random.Generator) -> list[int]:
    if count is None:
        return sorted(int(i) for i in indices)
    if count < 2:
        raise ValueError(f"need at least 2 {what} for the statistics, asked for {count}")
    if count > len(indices):
        raise ValueError(f"asked for {count} {what} but the model's split has only {len(indices)}")
    return sorted(int(i) for i in rng.choice(np.asarray(indices), size=count, replace=False))


# --- small helpers ----------------------------------------------------------------------------------------------


def row_noise(seed: int, draw: int, rows: Iterable[int], shape: Sequence[int]) -> torch.Tensor:
    """Gaussian noise for each row, seeded by (seed, draw, row) alone: independent of batching and of the image set."""
    generator = torch.Generator()
    noise = []
    for row in rows:
        generator.manual_seed(((seed * 1_000_003 + draw) * 10_000_019 + row) % (2**63))
        noise.append(torch.randn(tuple(shape), generator=generator))
    return torch.stack(noise)


def as_image_tensor(images: Images, what: str) -> torch.Tensor:
    if isinstance(images, ImageSet):
        images = images.images
    tensor = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).float()
    if tensor.ndim != 4:
        raise ValueError(f"{what}: expected images of shape (N, C, H, W), got {tuple(tensor.shape)}")
    if len(tensor) == 0:
        raise ValueError(f"{what}: no images")
    return tensor


def check_image_sets(members: Images, nonmembers: Images, denoiser=None) -> tuple[torch.Tensor, torch.Tensor]:
    member_images, nonmember_images = as_image_tensor(members, "members"), as_image_tensor(nonmembers, "non-members")
    if member_images.shape[1:] != nonmember_images.shape[1:]:
        raise ValueError(
            f"members have shape {tuple(member_images.shape[1:])} per image but non-members "
            f"{tuple(nonmember_images.shape[1:])}"
        )
    config = getattr(denoiser, "config", None)
    if config is not None and hasattr(config, "in_channels") and hasattr(config, "sample_size"):
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        expected = (config.in_channels, size, size)
        if tuple(member_images.shape[1:]) != expected:
            raise ValueError(f"images have shape {tuple(member_images.shape[1:])} but the denoiser expects {expected}")
    return member_images, nonmember_images


def check_timesteps(timesteps: Sequence[int], schedule, minimum: int) -> tuple[int, ...]:
    steps = tuple(int(t) for t in timesteps)
    total = schedule.config.num_train_timesteps
    if not steps:
        raise ValueError("give at least one timestep t")
    bad = [t for t in steps if not minimum <= t < total]
    if bad:
        raise ValueError(f"timesteps must lie in [{minimum}, {total - 1}], got {bad}")
    return tuple(dict.fromkeys(steps))  # drop repeats, keep order


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    from cpsample.sampling.sampler import DTYPES

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def place_module(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move a model in place to device / dtype and into eval mode (dropout off: the attacks read a fixed function)."""
    move_network(module, device, dtype)
    module.eval()


def _signal_noise(eps_hat: EpsPredictor, t: int) -> tuple[float, float]:
    abar = float(eps_hat.alphas_cumprod[t])
    return abar**0.5, (1.0 - abar) ** 0.5


def _mean_power(difference: torch.Tensor, power: float) -> torch.Tensor:
    """Per-image mean of |difference|^power over all pixels (float32)."""
    return difference.float().abs().pow(power).flatten(1).mean(dim=1)


def _guard_name(guard: Guard | None) -> str:
    return "plain" if guard is None else guard.name
