"""The monotone shortcut's count error: at s between probed lo and hi, copies kept at both plus the sampled ends of
those kept at lo and escaped at hi, against the true count (ends of independent full probes, monotone.py)."""

import itertools
import sys

import numpy as np

d = np.load(sys.argv[1])
scales = list(d["scales"])
copies = d["copies"]
E = {s: d[f"s{s}"] & copies for s in scales}
print("true counts", {s: int(E[s].sum()) for s in scales})
errs = []
for i, j, k in itertools.combinations(range(len(scales)), 3):
    lo, s, hi = scales[i], scales[j], scales[k]
    if hi / lo > 4.1:
        continue
    est = (E[lo] & E[hi]).sum() + (E[s] & E[lo] & ~E[hi]).sum()
    errs.append((lo, s, hi, int(E[s].sum()), int(est), int((E[lo] & ~E[hi]).sum())))
e = np.array([x[4] - x[3] for x in errs])
print(
    "triplets",
    len(errs),
    "est-true: mean %.2f, abs mean %.2f, max |%d|" % (e.mean(), np.abs(e).mean(), np.abs(e).max()),
)
near = [x for x in errs if x[2] / x[0] < 1.7]
for x in near:
    print(x)
