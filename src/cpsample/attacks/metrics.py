"""How well a membership score separates members from non-members: ROC AUC, TPR at a low FPR, one-sided Z-test.

Convention throughout: a LOWER score means "more likely a member" (reconstruction errors are smaller on the
training images of an overfit model), so the ROC treats -score as the member-detector output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve


@dataclass
class Separation:
    """Everything reported for one score (one attack at one t)."""

    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    z: float
    p_value: float
    member_mean: float
    nonmember_mean: float
    member_std: float
    nonmember_std: float

    def to_dict(self) -> dict:
        return asdict(self)


def check_scores(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray]:
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if len(members) < 2 or len(nonmembers) < 2:
        raise ValueError(f"need at least 2 member and 2 non-member scores, got {len(members)} and {len(nonmembers)}")
    if not (np.isfinite(members).all() and np.isfinite(nonmembers).all()):
        raise ValueError("membership scores contain NaN or inf (the denoiser or guard produced non-finite eps)")
    return members, nonmembers


def roc(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) vertices of the ROC curve, members being the positive class and low scores flagging them."""
    members, nonmembers = check_scores(member_scores, nonmember_scores)
    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    fpr, tpr, _ = roc_curve(labels, -np.r_[members, nonmembers], drop_intermediate=False)
    return fpr, tpr


def auc(member_scores, nonmember_scores) -> float:
    members, nonmembers = check_scores(member_scores, nonmember_scores)
    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    return float(roc_auc_score(labels, -np.r_[members, nonmembers]))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """TPR of the ROC curve at FPR = target, reading the curve as the piecewise-linear path through its vertices.

    Where the curve is vertical at the target (a threshold reaches exactly that FPR) the top of the jump counts;
    between vertices the straight segment counts (reachable by randomising between the two thresholds, and the
    right reading of tied scores). A plain np.interp would be ambiguous on the repeated FPR values.
    """
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target FPR must lie in [0, 1], got {target}")
    exact = fpr == target
    if exact.any():
        return float(tpr[exact].max())
    left = int(np.searchsorted(fpr, target, side="right")) - 1  # last vertex with fpr < target: top of its jump
    right = left + 1  # first vertex past the target: bottom of its jump
    share = (target - fpr[left]) / (fpr[right] - fpr[left])
    return float(tpr[left] + share * (tpr[right] - tpr[left]))


def z_test(member_scores, nonmember_scores) -> tuple[float, float]:
    """The CPSample paper's two-sample one-sided Z-test (Sec. 4.3): Z = (mu_test - mu_train) / sqrt(V_test/m +
    V_train/n).

    p = P(Z' >= Z) under the null "members do not score lower" (the paper states its null the other way round,
    but its statistic and reading only make sense this way): a small p means membership leaks.
    """
    members, nonmembers = check_scores(member_scores, nonmember_scores)
    difference = nonmembers.mean() - members.mean()
    spread = np.sqrt(nonmembers.var(ddof=1) / len(nonmembers) + members.var(ddof=1) / len(members))
    if spread == 0.0:  # both sets constant: the sign of the difference is all there is
        z = 0.0 if difference == 0.0 else float(np.sign(difference) * np.inf)
    else:
        z = float(difference / spread)
    return z, float(norm.sf(z))


def separation(member_scores, nonmember_scores) -> Separation:
    members, nonmembers = check_scores(member_scores, nonmember_scores)
    fpr, tpr = roc(members, nonmembers)
    z, p_value = z_test(members, nonmembers)
    return Separation(
        auc=auc(members, nonmembers),
        tpr_at_1pct_fpr=tpr_at_fpr(fpr, tpr, 0.01),
        tpr_at_01pct_fpr=tpr_at_fpr(fpr, tpr, 0.001),
        z=z,
        p_value=p_value,
        member_mean=float(members.mean()),
        nonmember_mean=float(nonmembers.mean()),
        member_std=float(members.std(ddof=1)),
        nonmember_std=float(nonmembers.std(ddof=1)),
    )
