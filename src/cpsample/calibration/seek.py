"""Goal-seeking calibration of CPSample's one-stage guard: the smallest alpha, and at it the smallest scale s, whose
cut of near-copies meets the goal, found by bisection instead of read off a fixed grid.

Why a probe is cheap: from the same noise a guarded sample follows the plain one exactly until the guard first acts
on it, and whether and when that happens depends on alpha and the plain trajectory alone, not on s. So the screen
samples plain once, keeping every step's x and the classifier's confidence (the watch), which says for every alpha
which samples the guard would ever act on and from which step. A scale is then probed by sampling again only plain's
near-copies that the guard would act on, each from the first step at which it was flagged (DDIM draws no noise on the
way, so the skipped steps are plain's); copies it never acts on stay copies at every scale.

What such a probe does not see: a plain non-copy that the guard turns into a copy (on `bundled`, 20 steps: 1 of 57
at s 10). Sampling every flagged sample again counts those too, but at alpha 0.1 the guard acts on nearly every
sample (78 of 80), so such an exact probe costs about 3 times as much: the scale the bisection finds is probed
exactly, the copies it turned take their place in the allowance, and the bisection goes on (EXACT_PROBES). The
screen aims a little above the goal, and the choice is sampled in full on fresh images (the check), which give the
cut, FD and time it is judged on.

    result = Calibrator(GridSettings(classifier="runs/clf"), Goal(reduction=0.95)).fit()   # seeks where it can
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cpsample.calibration import grid, search
from cpsample.calibration.goal import Goal
from cpsample.calibration.search import ONE_STAGE, PLAIN, GridSettings
from cpsample.evaluation.measures import Judge, NearCopyShare
from cpsample.models.classifier import trained_window
from cpsample.sampling.guards import Guard, NoGuard
from cpsample.sampling.sampler import sample_batch

# The screen aims the cut this far above the goal: the check's cut on fresh images scatters around the screen's
# (300 images with plain at 28% near-copies: one copy moves the cut 1.2 points), and landing within 3 points above
# the goal is the aim.
AIM_MARGIN = 0.015
# The bracket starts at FIRST_SCALE and moves by BRACKET_FACTOR within [MIN_SCALE, MAX_SCALE] until its ends
# disagree, then is bisected (geometric means) until they are within RESOLUTION of each other.
FIRST_SCALE = 30.0
BRACKET_FACTOR = 4.0
MIN_SCALE, MAX_SCALE = 0.5, 3000.0
RESOLUTION = 1.15
# A scale that misses the goal in the check is tried once more, this much larger, on the same check images.
RETRY_FACTOR = 1.25
# The probe's and the check's columns beside the grid's, so every row of a record has the same columns.
# max_t: the window the check ran (and calibration.json records); unflagged: plain copies the guard never flagged at
# this alpha (no scale moves them, so they cap the cut).
# exact: the probe sampled every flagged sample again, so its count is a full run's.
PROBE_COLUMNS = ("probed", "from_t", "unflagged", "exact", "max_t")


def why_not_seekable(settings: GridSettings, scales_given: bool = False) -> str | None:
    """Why the goal-seeking search cannot calibrate these settings (the grid then does), or None when it can."""
    if settings.latent:
        return "a Stable Diffusion pipeline is calibrated on the grid (its probes would need the pipeline's own loop)"
    if settings.early_classifier is not None:
        return "the two-stage guard (--early-classifier) is calibrated on the grid"
    if settings.scheduler != "ddim":
        return f"probes start part-way along plain trajectories, which needs DDIM (not {settings.scheduler})"
    if scales_given:
        return "--scales lists the grid's scales; the goal-seeking search finds the scale itself"
    return None


@dataclass
class KeptRun:
    """Plain sampling of n images with every step's x kept (what probes start from), measured as a grid row."""

    images: torch.Tensor  # (N, C, H, W) decoded, in [-1, 1]
    states: torch.Tensor  # (steps, N, C, H, W): x before each step
    timesteps: np.ndarray
    seconds: float
    least: np.ndarray | None = None  # (steps, N): the classifier's smaller class probability (watched runs)
    watch_seconds: float = 0.0  # of `seconds`, the watch's classifier calls (plain sampling would not pay them)
    trace: dict = dataclasses.field(default_factory=dict)  # plain sampling has no guard trace

    def flagged(self, alpha: float) -> np.ndarray:
        """(steps, N): where CPSample at this alpha would act first (its rule: the smaller probability < alpha)."""
        return self.least < alpha


class Watch(Guard):
    """Plain sampling that records the classifier's smaller class probability per step and sample (as "least"): where
    it is below alpha, CPSample's check at alpha fires."""

    name = "watch"

    def __init__(self, classifier: torch.nn.Module, trained_max_t: int | None = None):
        super().__init__()
        self.classifier, self.trained_max_t = classifier, trained_max_t
        self.seconds = 0.0  # spent in the classifier, over every batch

    def correct(self, predictions, x_t, t, abar_t):
        if self.trained_max_t is not None and int(t.max()) > self.trained_max_t:  # the guard never checks there
            self.record(least=torch.ones(len(x_t)))
            return predictions
        started = time.perf_counter()
        with torch.no_grad():
            probs = self.classifier(x_t.float(), t).float().softmax(dim=-1)
        self.record(least=probs.min(dim=1).values)
        self.seconds += time.perf_counter() - started
        return predictions


class Seeker:
    """The goal-seeking search on one model: plain runs kept, probes, checks in full. `fit()` returns what
    CalibrationResult holds."""

    def __init__(self, settings: GridSettings, goal: Goal, check_samples: int | None = None):
        self.settings, self.goal = settings, goal
        # The screen's plain run is twice the grid's screen: only its near-copies are sampled again, and the more
        # there are, the surer each probe's count (300 images of `bundled`: 102 copies, probes flat at 3-5 from s 30
        # to 120; 600 images: 203 copies, 29 -> 5 from s 7.5 to 30).
        self.screen_samples = 2 * settings.n_samples
        self.check_samples = check_samples or settings.n_samples
        self.adapter, self.classifier, reference, self.config = search.pixel_parts(settings)
        self.judge = Judge.from_reference(reference, (*search.GRID_MEASURES, *settings.measures))
        self.detector = reference.detector
        self.device = torch.device(settings.device)
        self.spent = {"settings": 0, "images": 0, "image_steps": 0}

    def fit(self, report, progress: bool = True) -> tuple[list[dict], list[dict], dict | None, str | None]:
        """(screen rows: plain then every probe; check rows: plain then each alpha's scale in full; the chosen check
        row or None; why the choice misses the goal or None)."""
        settings, goal = self.settings, self.goal
        plain = self.keep_plain(settings.seed, self.screen_samples, progress, watch=True)
        plain_row = self.row_of(plain, PLAIN)
        copies = np.asarray(self.detector(plain.images.numpy()), dtype=bool)
        if not copies.any():
            missed = (
                f"plain sampling made no near-copies on {self.screen_samples} images: there is nothing to cut. "
                "Give more --n-samples, or a lower --threshold if your copies are looser"
            )
            return [plain_row], [], None, missed
        allowed = math.floor(self.aimed_limit(plain_row) * self.screen_samples + 1e-9)
        rows, found, probe = [plain_row], {}, Probe(self, plain, copies)
        for alpha in settings.alphas or grid.SEEK_ALPHAS:
            found[alpha] = seek_scale(
                lambda s, a=alpha: probe(a, s), allowed, rows, progress, lambda s, a=alpha: probe(a, s, exact=True)
            )
            if found[alpha] is not None and settings.alphas is None:
                break  # the smallest alpha that can meet the goal guides the fewest samples
            if found[alpha] is None and rows[-1]["unflagged"] > allowed:
                report.note(
                    f"alpha {alpha:g} never flags {rows[-1]['unflagged']} of plain's {copies.sum()} near-copies (at "
                    f"most {allowed} may stay): no scale can meet the goal there"
                )
        self.judge.relate(rows)
        for row in rows[1:]:  # a probe samples a few images part of the way: its time is no sampling time
            row["time_vs_plain"] = None
        report.screened(rows, self.screen_samples)
        scales = {
            alpha: (scale, search.check_window(probe.last_fired_t[alpha])) for alpha, scale in found.items() if scale
        }
        if not scales:
            return rows, [], None, self.no_scale(found, int(copies.sum()), allowed, rows)
        checked = self.check(scales, rows, report, progress, plain)
        chosen = search.choose_setting(checked, goal.target, goal.reduction)
        if chosen is not None:
            return rows, checked, chosen, None
        chosen = min(checked[1:], key=lambda row: (row["near_copy_share"], row["frechet_distance"] or 0.0))
        return (
            rows,
            checked,
            chosen,
            (
                f"no scale kept {goal.describe()} in full on {self.check_samples} fresh images; kept the most "
                f"protective, {search.setting_label(chosen)} at {chosen['near_copy_share']:.1%} near-copies vs plain "
                f"{checked[0]['near_copy_share']:.1%}. More --n-samples make the screen's aim surer"
            ),
        )

    def no_scale(self, found: dict, copies: int, allowed: int, rows: list[dict] = ()) -> str:
        """Why no scale met the goal, and what to change. With no near-copy allowed to stay, one copy a probe leaves
        (or the guard makes) misses the goal: the screen is too small for the goal, whatever the classifier. Where an
        exact probe found the guard making copies of plain's non-copies, that is the reason, not the scale's range."""
        made = [row for row in rows if row.get("exact") and row["near_copies"] > allowed]
        if made:
            row = min(made, key=lambda row: row["near_copies"])
            return (
                f"at alpha {row['alpha']:g}, s {row['scale']:g} the guard left few of plain's {copies} near-copies "
                f"but turned plain non-copies into copies: {row['near_copies']} in the full screen of "
                f"{self.screen_samples}, more than the {allowed} the goal lets stay; give more --n-samples (a larger "
                "screen lets more stay), a smaller --reduction, or compare rejection sampling (bench/bench_seeds.py)"
            )
        said = f"no scale up to {MAX_SCALE:g} cut the near-copies of plain sampling enough at alpha "
        said += ", ".join(f"{alpha:g}" for alpha in found)
        if allowed == 0:
            return said + (
                f": plain made {copies} near-copies of {self.screen_samples}, so the goal lets none stay and a single "
                "copy misses it; give more --n-samples (the screen samples twice as many), or a smaller --reduction"
            )
        return said + ": the classifier may not fit its members (see its training record), or give a larger --alphas"

    def aimed_limit(self, plain_row: dict) -> float:
        """The near-copy share the screen aims under: the goal's limit with the cut AIM_MARGIN higher."""
        goal = self.goal
        reduction = None if goal.reduction is None else min(1.0, goal.reduction + AIM_MARGIN)
        return search.share_limit([plain_row], goal.target, reduction)

    def check(
        self, scales: dict[float, tuple[float, int | None]], screen: list[dict], report, progress: bool, plain: KeptRun
    ):
        """Each alpha's (scale, max_t) in full on check_samples fresh images, checking at t <= max_t as
        calibration.json will; plain first, taken from the screen's plain run (`plain_of_screen`). A setting's
        near-copies are pooled with the screen's where it counted them exactly (an exact probe at that scale), as the
        grid's confirmation round pools them; a setting that misses the goal then is tried once more RETRY_FACTOR
        larger."""
        settings, goal = self.settings, self.goal
        seed = settings.seed + search.CONFIRM_SEED_OFFSET
        report.checking([f"a={a:g}, s={s:g}" for a, (s, _) in scales.items()], self.check_samples, seed)
        exact = {(row["alpha"], row["scale"]): row for row in screen if row["guard"] == PLAIN or row.get("exact")}

        def pooled(row: dict) -> dict:
            counted = exact.get((row["alpha"], row["scale"]))
            return search.pool_rounds(counted, row) if counted else {**row, "confirmation_n": self.check_samples}

        if self.check_samples <= len(plain.images):
            rows = [self.plain_of_screen(plain, screen[0])]
        else:  # FD on fewer images than the guarded rows' would be biased (it grows as the count shrinks)
            rows = [pooled(self.row_of(self.keep_plain(seed, self.check_samples, progress), PLAIN))]
        for alpha, (scale, max_t) in scales.items():
            rows.append(pooled(self.full_row(alpha, scale, max_t, seed, progress)))
            if not search.feasible_rows([rows[0], rows[-1]], goal.target, goal.reduction):
                retry = float(f"{scale * RETRY_FACTOR:.3g}")
                rows.append(pooled(self.full_row(alpha, retry, max_t, seed, progress)))
        self.judge.relate(rows)
        report.checked(rows, self.check_samples)
        return rows

    def plain_of_screen(self, plain: KeptRun, screen_row: dict) -> dict:
        """Plain's check row from the screen's plain run instead of plain sampling on the check's fresh noise: its
        near-copies over the whole screen (counted exactly there), FD on its first check_samples images (as many as
        each guarded check row's, since FD's bias depends on the count) and the time of that many of its images less
        the watch's classifier calls. Plain's share on fresh images would barely narrow the cut's interval (the
        guarded count, a few copies, dominates it) and cost a sixth of calibrate's time (bench/README, Finding 28)."""
        n = self.check_samples
        seconds = (plain.seconds - plain.watch_seconds) * n / len(plain.images)
        part = dataclasses.replace(plain, images=plain.images[:n], seconds=seconds)
        return {
            **self.row_of(part, PLAIN),
            **NearCopyShare.columns(screen_row["near_copies"], screen_row["n"]),
            "confirmation_n": 0,
            "screen_frechet_distance": screen_row["frechet_distance"],
            "plain_from": "screen",
        }

    def keep_plain(self, seed: int, n: int, progress: bool, watch: bool = False) -> KeptRun:
        """Plain sampling of n images from the noise `generate` draws for (seed, batch_size), every step's x kept and,
        with watch, the classifier's confidence."""
        config, adapter = self.config, self.adapter
        images, states, least = [], [], []
        guard = Watch(self.classifier.model, trained_window(self.classifier.folder)) if watch else NoGuard()
        started = time.time()
        for batch in tqdm(adapter.batches(n, config.batch_size, seed), desc="plain (kept)", disable=not progress):
            kept: list[torch.Tensor] = []
            x, trace = sample_batch(
                adapter.denoiser(None),
                self.scheduler(),
                (batch.size, *adapter.sample_shape),
                guard,
                batch.generator(),
                self.device,
                raw=True,
                states=kept,
            )
            images.append(adapter.decode(x))
            states.append(torch.stack(kept))
            least.append(trace.get("least"))
        self.spend(n, len(self.scheduler().timesteps) * n)
        timesteps = self.scheduler().timesteps.cpu().numpy()
        watched = np.concatenate(least, axis=1) if watch else None
        seconds, watched_seconds = time.time() - started, getattr(guard, "seconds", 0.0)
        return KeptRun(torch.cat(images), torch.cat(states, dim=1), timesteps, seconds, watched, watched_seconds)

    def full_row(self, alpha: float, scale: float, max_t: int | None, seed: int, progress: bool) -> dict:
        """One-stage (alpha, scale), checking at t <= max_t, sampled in full from (seed, check_samples): a grid row."""
        from cpsample.sampling.generate import generate
        from cpsample.sampling.spec import GuardSpec

        candidate = one_stage(alpha, scale)
        spec = GuardSpec.create(ONE_STAGE, alpha=alpha, scale=scale, tau=self.settings.tau, max_t=max_t)
        config = dataclasses.replace(self.config, n=self.check_samples, seed=seed, progress=progress)
        started = time.time()
        result = generate(self.adapter, spec, config, self.classifier)
        self.spend(self.check_samples, len(result.timesteps) * self.check_samples)
        measured = self.judge(result, seconds=time.time() - started)
        return {**candidate, **measured, **dict.fromkeys(PROBE_COLUMNS), "max_t": max_t}

    def row_of(self, run: KeptRun, guard: str) -> dict:
        return {**search.setting_of({"guard": guard}), **self.judge(run), **dict.fromkeys(PROBE_COLUMNS)}

    def scheduler(self):
        return self.adapter.scheduler(self.settings.scheduler, self.settings.steps)

    def spend(self, images: int, image_steps: int) -> None:
        self.spent["settings"] += 1
        self.spent["images"] += images
        self.spent["image_steps"] += image_steps


class Probe:
    """The near-copies a one-stage (alpha, s) leaves on the screen's noise: the copies the guard would act on at alpha
    (exact: every sample it would act on) are sampled again, each from the first step at which it was flagged; the
    others end as they did under plain sampling."""

    def __init__(self, seeker: Seeker, plain: KeptRun, copies: np.ndarray):
        self.seeker, self.plain, self.copies = seeker, plain, copies  # copies: plain's near-copies, one bool per image
        self.last_fired_t: dict[float, int | None] = {}  # per alpha: the highest t at which it acted, over its probes
        # per (alpha, scale) probed on plain's copies: which images ended as copies. An exact probe at a probed scale
        # samples only the flagged non-copies (the copies would end as they did: same start, same guard).
        self.left: dict[tuple[float, float], np.ndarray] = {}

    def __call__(self, alpha: float, scale: float, exact: bool = False) -> dict:
        """The row of (alpha, scale); exact: every flagged sample sampled again (plain non-copies too; plain's copies
        only where no probe at this scale sampled them yet), so its count is a full run's."""
        seeker, settings, plain = self.seeker, self.seeker.settings, self.plain
        candidate = one_stage(alpha, scale)
        guard = seeker.adapter.guard(search.candidate_spec(settings, candidate), seeker.classifier, settings.device)
        probed = self.left.get((alpha, scale)) if exact else None
        if not exact:
            again = self.copies
        elif probed is not None:  # plain's copies were probed at this scale: only its non-copies are left to sample
            again = ~self.copies
        else:
            again = np.ones_like(self.copies)
        flagged_at = plain.flagged(alpha) & again  # (steps, N): where the guard acts on the samples sampled again
        flagged = np.flatnonzero(flagged_at.any(axis=0))
        first = int(np.argmax(flagged_at.any(axis=1))) if len(flagged) else len(plain.timesteps)
        # Each sample starts at its own first flagged step: until then its guarded trajectory is plain's (about 0.6 of
        # the steps from the earliest flag among them on `bundled`, alpha 0.1).
        own_first = np.argmax(flagged_at[:, flagged], axis=0)
        started, fired, steps_run = time.time(), [], 0
        copies = (self.copies if probed is None else probed).copy()
        for begin_at in np.unique(own_first):
            group = flagged[own_first == begin_at]
            for begin in range(0, len(group), settings.batch_size):
                rows = group[begin : begin + settings.batch_size]
                x_first = plain.states[int(begin_at), torch.as_tensor(rows)]
                x, trace = sample_batch(
                    seeker.adapter.denoiser(None),
                    seeker.scheduler(),
                    tuple(x_first.shape),
                    guard,
                    torch.Generator(),  # unused: DDIM draws no noise, and x is given
                    seeker.device,
                    raw=True,
                    start=(int(begin_at), x_first),
                )
                copies[rows] = seeker.detector(seeker.adapter.decode(x).numpy())
                fired.append(trace["fired"] > 0)
                steps_run += (len(plain.timesteps) - int(begin_at)) * len(rows)
        seeker.spend(len(flagged), steps_run)
        if not exact:
            self.left[(alpha, scale)] = copies
        fired_steps = np.concatenate(fired, axis=1).any(axis=1) if fired else np.zeros(len(plain.timesteps), bool)
        last = int(plain.timesteps[fired_steps].max()) if fired_steps.any() else None
        self.last_fired_t[alpha] = max(filter(None, (last, self.last_fired_t.get(alpha))), default=None)
        return {
            **candidate,
            **NearCopyShare.columns(int(copies.sum()), len(copies)),
            "steps_guided": None,  # of the copies only: not the share of a full run
            "last_fired_t": last,
            "frechet_distance": None,
            "seconds": time.time() - started,
            "probed": len(flagged),
            "from_t": int(plain.timesteps[first]) if len(flagged) else None,
            "unflagged": int((self.copies & ~plain.flagged(alpha).any(axis=0)).sum()),
            "exact": exact,
            "max_t": None,
        }


# After the bisection the found scale is probed exactly (every flagged sample, not only plain's copies, which its probe
# already ran; about a quarter of a full run on `bundled`): plain non-copies the guard turned into copies there take
# their place in the allowance, and the bisection goes on once more (the check then counts every sample in full). At
# most this many exact probes per alpha.
EXACT_PROBES = 1


def one_stage(alpha: float, scale: float) -> dict:
    """The grid's candidate (its row's knobs) for CPSample's one-stage rule at (alpha, scale)."""
    return {**search.setting_of({"guard": ONE_STAGE}), "alpha": alpha, "scale": scale}


def seek_scale(probe, allowed: int, rows: list[dict], progress: bool = True, exact=None) -> float | None:
    """The smallest scale (to within RESOLUTION) whose probe leaves at most `allowed` near-copies, each probe's row
    appended to `rows`; None when MAX_SCALE leaves more. Near-copies fall as s grows (same noise), so a bracket
    [infeasible, feasible] is found from FIRST_SCALE and bisected in log space. `exact(scale)`, when given, counts
    every sample at the found scale (EXACT_PROBES)."""
    bar = tqdm(desc="seeking the scale", unit="probe", disable=not progress)
    counted: dict[float, int] = {}  # scale -> near-copies left among plain's copies (kept across rounds)
    never_flagged = [0]
    allowance = allowed

    def meets(scale: float) -> bool:
        if scale not in counted:
            row = probe(scale)
            rows.append(row)
            counted[scale], never_flagged[0] = row["near_copies"], row["unflagged"]
            bar.update()
            bar.set_postfix(s=f"{scale:g}", copies=row["near_copies"], allowed=allowance)
        return counted[scale] <= allowance

    for exact_probes in range(EXACT_PROBES + 1):  # `rows` holds other alphas' probes too: count this call's
        found = _bisect(meets, lambda: never_flagged[0] > allowance)
        if found is None or exact is None or exact_probes == EXACT_PROBES:
            break
        row = exact(found)
        rows.append(row)
        bar.update()
        turned = max(0, row["near_copies"] - counted[found])  # plain non-copies that became copies at this scale
        if row["near_copies"] <= allowed or allowed - turned == allowance:
            break
        allowance = allowed - turned
        if allowance < 0:
            found = None
            break
    bar.close()
    return found


def _bisect(meets, capped) -> float | None:
    """The smallest scale that meets, to within RESOLUTION; None when none does."""
    low, high = _bracket(meets, capped)
    while low is not None and high is not None and high / low > RESOLUTION:
        middle = float(f"{math.sqrt(low * high):.3g}")
        if middle in (low, high):
            break
        if meets(middle):
            high = middle
        else:
            low = middle
    return high


def _bracket(meets, capped) -> tuple[float | None, float | None]:
    """(largest scale seen to miss, smallest seen to meet): from FIRST_SCALE downwards while it meets, upwards while
    it misses; None where the range's end was reached first, or where `capped()` says after the first probe that the
    copies never flagged are already too many for any scale."""
    scale = FIRST_SCALE
    if meets(scale):
        while scale / BRACKET_FACTOR >= MIN_SCALE:
            lower = float(f"{scale / BRACKET_FACTOR:.3g}")
            if not meets(lower):
                return lower, scale
            scale = lower
        return None, scale
    if capped():
        return scale, None
    while scale * BRACKET_FACTOR <= MAX_SCALE:
        higher = float(f"{scale * BRACKET_FACTOR:.3g}")
        if meets(higher):
            return scale, higher
        scale = higher
    return scale, None
