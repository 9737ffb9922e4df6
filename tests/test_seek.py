"""The goal-seeking calibration (calibration/seek.py): a probe counts what a full run counts among plain's copies, the
loop resumes a kept trajectory bit for bit, the bisection finds the smallest scale that meets the goal, and the
Calibrator checks its choice in full and saves the window it checked."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from helpers import cli

from cpsample.calibration import Calibrator, Goal, GridSettings, seek
from cpsample.calibration.search import candidate_spec, check_window
from cpsample.sampling.generate import generate
from cpsample.sampling.guards import Guard, NoGuard
from cpsample.sampling.sampler import sample_batch

FAST = dict(n_samples=40, steps=20, batch_size=25)


@pytest.fixture(scope="module")
def seeker():
    return seek.Seeker(GridSettings(**FAST), Goal())


@pytest.fixture(scope="module")
def watched(seeker):
    return seeker.keep_plain(0, 80, progress=False, watch=True)


def test_a_kept_plain_run_is_generate_s_plain_run(seeker, watched):
    plain = generate(seeker.adapter, "none", dataclasses.replace(seeker.config, n=80))
    assert torch.equal(plain.images, watched.images)
    assert watched.states.shape == (20, 80, 1, 16, 16) and watched.least.shape == (20, 80)
    assert np.all((watched.least >= 0) & (watched.least <= 0.5))  # the smaller of two probabilities


def test_a_probe_counts_what_a_full_run_counts_among_plain_copies(seeker, watched):
    copies = np.asarray(seeker.detector(watched.images.numpy()), dtype=bool)
    assert 10 <= copies.sum() <= 40  # the bundled model copies about a third of the time
    probe, full_counts = seek.Probe(seeker, watched, copies), {}
    for scale in (3.0, 10.0):
        row = probe(0.1, scale)
        candidate = seek.one_stage(0.1, scale)
        config = dataclasses.replace(seeker.config, n=80)
        full = generate(seeker.adapter, candidate_spec(seeker.settings, candidate), config, seeker.classifier)
        left = np.asarray(seeker.detector(full.images.numpy()), dtype=bool)
        full_counts[scale] = left.sum()
        assert row["near_copies"] == (left & copies).sum(), f"s {scale}: the probe sees every copy a full run keeps"
        exact = probe(0.1, scale, exact=True)
        assert exact["near_copies"] == left.sum() and exact["exact"], "an exact probe counts what a full run counts"
        # it samples the flagged non-copies only: the copies were probed at this scale just now
        assert exact["probed"] + row["probed"] == watched.flagged(0.1).any(axis=0).sum()
        assert exact["unflagged"] == row["unflagged"]
        assert row["probed"] == (copies & watched.flagged(0.1).any(axis=0)).sum() < 80
        first_fired = full.timesteps[full.trace["fired"].any(axis=1)].max()
        assert row["from_t"] >= first_fired and row["last_fired_t"] <= first_fired
    # an exact probe at a scale not probed yet samples every flagged sample, to the same count
    first = seek.Probe(seeker, watched, copies)(0.1, 10.0, exact=True)
    assert first["near_copies"] == full_counts[10.0] and first["probed"] == watched.flagged(0.1).any(axis=0).sum()
    # copies the guard never flags stay copies whatever the scale
    assert probe(0.1, 300.0)["near_copies"] >= row["unflagged"] == (copies & ~watched.flagged(0.1).any(axis=0)).sum()


class Fires(Guard):
    """Records fired=True at every step it runs (to see the trace's padding)."""

    def correct(self, predictions, x_t, t, abar_t):
        self.record(fired=torch.ones(len(x_t), dtype=torch.bool), p1=torch.full((len(x_t),), 0.5))
        return predictions


def test_the_loop_resumes_a_kept_trajectory_bit_for_bit_and_pads_its_trace(seeker):
    def run(guard, **options):
        return sample_batch(
            seeker.adapter.denoiser(None),
            seeker.scheduler(),
            (3, 1, 16, 16),
            guard,
            torch.Generator().manual_seed(7),
            torch.device("cpu"),
            raw=True,
            **options,
        )

    kept: list[torch.Tensor] = []
    whole, _ = run(NoGuard(), states=kept)
    assert len(kept) == 20
    resumed, trace = run(Fires(), start=(12, kept[12]))
    rest, _ = run(NoGuard(), start=(12, kept[12]))
    assert torch.equal(rest, whole), "from step 12 of a kept run, the same end"
    assert torch.equal(resumed, whole), "a guard that changes no eps changes nothing"
    assert trace["fired"].shape == (20, 3) and trace["fired"][:12].sum() == 0 and trace["fired"][12:].all()
    assert np.isnan(trace["p1"][:12]).all() and (trace["p1"][12:] == 0.5).all()


def stand_in(copies_at, unflagged: int = 0):
    """A probe whose near-copies fall as 1/s: copies_at(s), never below `unflagged`."""
    seen = []

    def probe(scale):
        seen.append(scale)
        return {"near_copies": max(unflagged, copies_at(scale)), "unflagged": unflagged}

    return probe, seen


def test_the_bisection_finds_the_smallest_scale_that_meets_within_its_resolution():
    probe, seen = stand_in(lambda s: math.ceil(100 / s))  # 5 or fewer from s 20 on
    rows = []
    found = seek.seek_scale(probe, 5, rows, progress=False)
    assert 20 <= found <= 20 * seek.RESOLUTION and len(rows) == len(seen) <= 8
    probe, seen = stand_in(lambda s: 0)  # everything meets: down to the range's end
    assert seek.seek_scale(probe, 5, [], progress=False) == min(seen) >= seek.MIN_SCALE
    probe, seen = stand_in(lambda s: 0, unflagged=9)  # 9 copies never flagged, 5 allowed: one probe says so
    assert seek.seek_scale(probe, 5, [], progress=False) is None and seen == [seek.FIRST_SCALE]
    probe, seen = stand_in(lambda s: 50)  # nothing meets: up to the range's end, then None
    assert seek.seek_scale(probe, 5, [], progress=False) is None and max(seen) <= seek.MAX_SCALE


def test_an_exact_probe_shrinks_the_allowance_by_the_copies_the_guard_made():
    probe, seen = stand_in(lambda s: math.ceil(100 / s))
    exact_at = []

    def exact(scale):  # the guard turned 2 plain non-copies into copies at every scale
        exact_at.append(scale)
        return {"near_copies": math.ceil(100 / scale) + 2, "unflagged": 0, "exact": True}

    rows = []
    found = seek.seek_scale(probe, 5, rows, progress=False, exact=exact)
    assert len(exact_at) == seek.EXACT_PROBES == 1 and 20 <= exact_at[0] <= 23
    assert math.ceil(100 / found) <= 3 and 100 / 3 <= found <= 100 / 3 * seek.RESOLUTION, "3 allowed after 2 made"
    assert len(seen) == len(set(seen)), "no scale is probed twice"
    seek.seek_scale(probe, 5, rows, progress=False, exact=exact)  # the next alpha, its rows after this one's
    assert len(exact_at) == 2, "each alpha has its own exact probe"


def test_calibrator_seeks_then_checks_in_full_and_saves_the_window_it_checked(tmp_path):
    settings = GridSettings(**FAST, seed=1)
    result = Calibrator(settings, Goal(reduction=0.8), confirm_samples=60).fit(progress=False)
    assert result.search == "seek" and result.missed is None
    plain, *probes = result.rows
    assert plain["guard"] == "none" and plain["n"] == 80 and probes
    assert all(row["frechet_distance"] is None for row in probes)
    assert all(row["probed"] <= plain["near_copies"] for row in probes if not row["exact"])
    assert sum(row["exact"] for row in probes) == 1
    assert [row["guard"] for row in result.confirmed][:2] == ["none", "cpsample"]
    assert all(row["confirmation_n"] == 60 for row in result.confirmed[1:])
    # plain is the screen's run, not sampled again: its near-copies over all 80, FD on 60 of them (FD's bias depends
    # on the count), its time that of 60 images without the watch's classifier calls
    checked_plain = result.confirmed[0]
    assert checked_plain["plain_from"] == "screen" and checked_plain["confirmation_n"] == 0
    assert checked_plain["near_copies"] == plain["near_copies"] and checked_plain["n"] == 80
    assert checked_plain["frechet_distance"] != plain["frechet_distance"] == checked_plain["screen_frechet_distance"]
    assert 0 < checked_plain["seconds"] < plain["seconds"] * 60 / 80
    # a setting's near-copies pooled with the screen where it counted them exactly: an exact probe at that scale
    exact_scales = [row["scale"] for row in probes if row["exact"]]
    assert [row["n"] for row in result.confirmed[1:]] == [
        80 + 60 if row["scale"] in exact_scales else 60 for row in result.confirmed[1:]
    ]
    assert result.confirmation["n_samples"] == 60
    chosen = result.chosen
    assert chosen in result.confirmed and chosen["near_copy_share"] <= 0.2 * result.plain["near_copy_share"]
    assert chosen["scale"] in [row["scale"] for row in probes] or chosen["scale"] / seek.RETRY_FACTOR in [
        row["scale"] for row in probes
    ]
    assert chosen["last_fired_t"] <= chosen["max_t"] == result.knobs["max_t"]
    probed_at_alpha = [row["last_fired_t"] for row in probes if row["alpha"] == chosen["alpha"]]
    assert chosen["max_t"] == check_window(max(probed_at_alpha))
    assert result.cut["cut_low"] <= result.cut["cut"] <= result.cut["cut_high"]
    assert result.spent["settings"] == len(result.rows) + len(result.confirmed) - 1
    assert result.spent["images"] == 80 + sum(row["probed"] for row in probes) + 60 * (len(result.confirmed) - 1)
    record = json.loads(result.save(tmp_path / "run").read_text())
    assert record["search"] == "seek" and record["spent"] == result.spent and record["cut"] == result.cut


def test_calibrate_says_where_it_cannot_seek(tmp_path):
    code, output = cli("calibrate", "--classifier", "bundled", "--search", "seek", "--scales", "10", "--out", tmp_path)
    assert code != 0 and "finds the scale itself" in output and "search 'grid'" in output, output
    code, output = cli("calibrate", "--classifier", "bundled", "--search", "best", "--out", tmp_path / "b")
    assert code != 0 and "auto, seek, grid" in output, output


def test_a_goal_that_lets_no_copy_stay_is_said_to_need_more_images():
    """16 plain copies in 600 and a 95% cut: none may stay, so one copy left misses the goal; the search then asks
    for a larger screen, not for another classifier."""
    from types import SimpleNamespace

    from cpsample.calibration.seek import Seeker

    screen = SimpleNamespace(screen_samples=600)
    tight = Seeker.no_scale(screen, {0.1: None, 0.5: None}, copies=16, allowed=0)
    assert "at alpha 0.1, 0.5: plain made 16 near-copies of 600, so the goal lets none stay" in tight
    assert "--n-samples" in tight and "may not fit" not in tight
    loose = Seeker.no_scale(screen, {0.1: None}, copies=200, allowed=9)
    assert "may not fit its members" in loose and "--n-samples" not in loose


def test_copies_the_guard_makes_are_named_as_the_reason_no_scale_met_the_goal():
    """On a 1,000-member model the bisection found s 23.1 at alpha 0.5 (1 of 51 plain copies left), but the exact probe
    counted 3 in all: the guard turned 2 plain non-copies into copies. That, not the scale's range or the classifier,
    is what the message must say."""
    from types import SimpleNamespace

    from cpsample.calibration.seek import Seeker

    screen = SimpleNamespace(screen_samples=600)
    probe = {"alpha": 0.5, "scale": 23.1, "near_copies": 1, "exact": False}
    exact = {"alpha": 0.5, "scale": 23.1, "near_copies": 3, "exact": True}
    said = Seeker.no_scale(screen, {0.5: None}, copies=51, allowed=1, rows=[probe, exact])
    assert "at alpha 0.5, s 23.1" in said and "turned plain non-copies into copies: 3" in said, said
    assert "no scale up to" not in said and "may not fit" not in said and "--n-samples" in said
