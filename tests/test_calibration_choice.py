"""How `cpsample calibrate` chooses among measured grid rows: the goal's share limit, which rows meet it, the quality
order that ranks them, the finalists, the confirmation round's pooled rows and its fallback. Hand-built rows only
(the sampler is tested elsewhere), so every rule is pinned at its boundary."""

from __future__ import annotations

import pytest

from cpsample.calibration.search import (
    choose_confirmed,
    choose_setting,
    feasible_rows,
    finalists,
    one_stage_setting,
    pool_rounds,
    share_limit,
)
from cpsample.evaluation.replication import clopper_pearson


def _row(guard="cpsample", share=0.01, fd=5.0, guided=0.1, alpha=0.1, scale=10.0, **extra):
    return {
        "guard": guard,
        "alpha": None if guard == "none" else alpha,
        "scale": None if guard == "none" else scale,
        "near_copy_share": share,
        "frechet_distance": fd,
        "steps_guided": None if guard == "none" else guided,
        **extra,
    }


def _plain(share=0.4, fd=3.0):
    return _row("none", share=share, fd=fd)


def test_share_limit_is_the_stricter_of_the_target_and_the_reduction():
    rows = [_plain(share=0.4)]
    assert share_limit(rows, target=0.05) == 0.05
    assert share_limit(rows, reduction=0.9) == pytest.approx(0.04)  # (1 - 0.9) x plain's 0.4
    assert share_limit(rows, target=0.05, reduction=0.9) == pytest.approx(0.04)  # the reduction is stricter
    assert share_limit(rows, target=0.03, reduction=0.9) == 0.03  # the target is stricter
    assert share_limit(rows, reduction=0.0) == pytest.approx(0.4)  # "no worse than plain"
    # the reduction is measured against the plain row, wherever it stands
    assert share_limit([_row(share=0.2), _plain(share=0.5)], reduction=0.5) == pytest.approx(0.25)


def test_a_row_exactly_at_the_limit_is_feasible_and_plain_never_is():
    plain = _plain(share=0.0)  # a plain row that meets any goal is still not a setting to choose
    at_limit, above = _row(share=0.05), _row(share=0.0500001)
    rows = [plain, at_limit, above]
    assert feasible_rows(rows, target=0.05) == [at_limit]
    always = _row(share=1.0)
    assert feasible_rows([*rows, always]) == [at_limit, above, always]  # no goal: every guarded row, in grid order
    assert choose_setting(rows, target=0.05) is at_limit
    assert choose_setting(rows, target=0.04) is None
    assert finalists(rows, target=0.04) == []


def test_the_quality_order_ranks_fd_then_guided_steps_then_the_gentlest_knobs():
    """Lowest FD wins; at equal FD the fewer guided steps, then smaller alpha, smaller scale, smaller early scale, and
    a tighter push cap before none."""
    best_fd = _row(fd=4.0, guided=0.9, alpha=0.3, scale=100.0)
    assert choose_setting([_plain(), _row(fd=4.5, guided=0.01, alpha=0.001, scale=3.0), best_fd]) is best_fd
    fewer_steps = _row(fd=5.0, guided=0.05, alpha=0.3, scale=100.0)
    assert choose_setting([_plain(), _row(fd=5.0, guided=0.06, alpha=0.001, scale=3.0), fewer_steps]) is fewer_steps
    smaller_alpha = _row(alpha=0.01, scale=30.0)
    assert choose_setting([_plain(), _row(alpha=0.1, scale=3.0), smaller_alpha]) is smaller_alpha
    smaller_scale = _row(scale=3.0)
    assert choose_setting([_plain(), _row(scale=10.0), smaller_scale]) is smaller_scale
    staged = dict(guard="cpsample-staged", max_push=None)
    gentle_early = _row(early_scale=1.0, **staged)
    assert choose_setting([_plain(), _row(early_scale=3.0, **staged), gentle_early]) is gentle_early
    one_stage = _row()  # no early push at all: gentler than any early scale
    assert choose_setting([_plain(), _row(early_scale=0.5, **staged), one_stage]) is one_stage
    tight_cap = _row(early_scale=3.0, **{**staged, "max_push": 1.0})
    assert (
        choose_setting(
            [
                _plain(),
                _row(early_scale=3.0, **{**staged, "max_push": 2.0}),
                _row(early_scale=3.0, **staged),
                tight_cap,
            ]
        )
        is tight_cap
    )


def test_missing_measurements_rank_as_zero():
    """Without a quality net there is no FD (None): the fewest guided steps decide; a row that never fired (None
    steps guided) guides none."""
    no_fd = [_plain(fd=None), _row(fd=None, guided=0.2, alpha=0.001), _row(fd=None, guided=0.1, alpha=0.1)]
    assert choose_setting(no_fd) is no_fd[2]
    never_fired = _row(fd=None, guided=None, alpha=0.1)
    assert choose_setting([*no_fd, never_fired]) is never_fired


def test_finalists_are_the_best_feasible_rows_best_first():
    rows = [_plain(share=0.3), _row(fd=6.0), _row(fd=4.0), _row(fd=9.0, share=0.2), _row(fd=5.0), _row(fd=7.0)]
    assert [r["frechet_distance"] for r in finalists(rows, target=0.1)] == [4.0, 5.0, 6.0, 7.0]  # four by default
    assert [r["frechet_distance"] for r in finalists(rows, target=0.1, count=2)] == [4.0, 5.0]
    assert [r["frechet_distance"] for r in finalists(rows, reduction=0.5, count=10)] == [4.0, 5.0, 6.0, 7.0]
    assert finalists(rows, target=0.1, count=2)[0] is choose_setting(rows, target=0.1)


def test_the_confirmation_falls_back_to_the_most_protective_finalist_never_plain():
    """When no finalist keeps the cut once pooled: the fewest near-copies, then the best FD (a missing FD ranks as 0);
    plain (first) is never returned, however few copies it has."""
    plain = _plain(share=0.001, fd=1.0)
    worse, fewest_bad_fd, fewest_good_fd = _row(share=0.09, fd=2.0), _row(share=0.06, fd=8.0), _row(share=0.06, fd=7.0)
    confirmed = [plain, worse, fewest_bad_fd, fewest_good_fd]
    assert choose_confirmed(confirmed, target=0.05) == (fewest_good_fd, False)
    assert choose_confirmed(confirmed, target=0.06) == (fewest_good_fd, True)  # feasible now: the best FD among them
    assert choose_confirmed(confirmed, target=0.1) == (worse, True)
    assert choose_confirmed([plain, fewest_good_fd, worse], target=0.05) == (fewest_good_fd, False)


def test_the_one_stage_setting_ignores_two_stage_rows():
    plain = _plain(share=0.4)
    staged = _row("cpsample-staged", share=0.01, fd=3.0, early_scale=3.0)
    one_good, one_worse = _row(share=0.03, fd=4.0), _row(share=0.02, fd=4.5)
    rows = [plain, staged, one_worse, one_good]
    assert one_stage_setting(rows, staged, reduction=0.9) is one_good
    assert one_stage_setting(rows, one_worse, reduction=0.9) is one_worse  # a one-stage choice stands as it is
    assert one_stage_setting(rows, None, target=0.025) is one_worse  # nothing chosen yet: the best one-stage row
    assert one_stage_setting([plain, staged], staged, reduction=0.9) is staged  # no one-stage row: the chosen one
    assert one_stage_setting([plain, staged], None, reduction=0.9) is None
    # the goal's reduction applies to the one-stage rows too
    loose = _row(share=0.05, fd=3.5)
    assert one_stage_setting([plain, staged, one_worse, loose], staged, reduction=0.9) is one_worse


def _measured(copies, n, guided, last_t, fd, **extra):
    return {
        **_row(fd=fd, guided=guided),
        "n": n,
        "near_copies": copies,
        "near_copy_share": copies / n,
        "last_fired_t": last_t,
        "seconds": 2.0,
        **extra,
    }


def test_pooled_rounds_count_copies_over_both_and_take_the_rest_from_the_confirmation():
    screen = _measured(6, 300, 0.2, 380, 5.0, seconds=1.0)
    second = _measured(9, 600, 0.05, 340, 4.0)
    pooled = pool_rounds(screen, second)
    assert (pooled["n"], pooled["near_copies"]) == (900, 15)
    assert pooled["near_copy_share"] == pytest.approx(15 / 900)
    assert (pooled["ci_low"], pooled["ci_high"]) == clopper_pearson(15, 900)
    assert pooled["steps_guided"] == pytest.approx((0.2 * 300 + 0.05 * 600) / 900)  # weighted by images
    assert pooled["last_fired_t"] == 380  # the higher of the two
    assert pooled["frechet_distance"] == 4.0 and pooled["screen_frechet_distance"] == 5.0
    assert pooled["seconds"] == 2.0 and pooled["confirmation_n"] == 600
    later = pool_rounds(_measured(6, 300, 0.2, 300, 5.0), second)
    assert later["last_fired_t"] == 340


def test_pooled_rounds_skip_what_a_round_did_not_measure():
    plain_screen = {**_plain(), "n": 300, "near_copies": 120, "near_copy_share": 0.4, "last_fired_t": None}
    plain_second = {**_plain(), "n": 600, "near_copies": 270, "near_copy_share": 0.45, "last_fired_t": None}
    pooled = pool_rounds(plain_screen, plain_second)
    assert pooled["steps_guided"] is None and pooled["last_fired_t"] is None
    assert pooled["near_copies"] == 390
    # a round that guided nothing measurable (no trace) leaves the other round's share and window
    traced = _measured(3, 300, 0.1, 200, 5.0)
    untraced = {**_measured(4, 600, 0.0, None, 4.0), "steps_guided": None}
    pooled = pool_rounds(traced, untraced)
    assert pooled["steps_guided"] == pytest.approx(0.1) and pooled["last_fired_t"] == 200
    assert pool_rounds(untraced, traced)["steps_guided"] == pytest.approx(0.1)
