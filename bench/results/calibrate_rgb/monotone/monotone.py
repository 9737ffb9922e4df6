"""Is a plain copy's fate monotone in the scale? Probe every plain copy at several scales (alpha 0.1) and count
samples that escape at a lower scale but end as copies at a higher one (bench/README, Finding 29).

Ran against a tried Probe (not kept) that stored each scale's ends as `probe.ended`; with today's seek.py read
`probe.left` instead. Usage: python monotone.py MODEL CLASSIFIER SCALES STEPS, e.g.
    OMP_NUM_THREADS=1 python monotone.py bundled-rgb CLASSIFIER_COPY 30,45,60,71.4,77.9,84.9,100,120 50
"""

import json
import sys
import time

import numpy as np

from cpsample.calibration import Goal, GridSettings, seek

model, classifier, scales, steps = (
    sys.argv[1],
    sys.argv[2],
    [float(s) for s in sys.argv[3].split(",")],
    int(sys.argv[4]),
)
settings = GridSettings(model=model, classifier=classifier, steps=steps)
seeker = seek.Seeker(settings, Goal())
plain = seeker.keep_plain(settings.seed, seeker.screen_samples, progress=False, watch=True)
copies = np.asarray(seeker.detector(plain.images.numpy()), dtype=bool)
probe = seek.Probe(seeker, plain, copies)
ends = {}
for s in scales:
    t0 = time.time()
    probe = seek.Probe(seeker, plain, copies)  # alone: every flagged copy sampled
    row = probe(0.1, s)
    ends[s] = probe.ended[(0.1, s)]
    print(s, row["near_copies"], row["probed"], round(time.time() - t0, 1), flush=True)
out = {"copies": int(copies.sum()), "counts": {}, "violations": {}}
for i, lo in enumerate(scales):
    out["counts"][lo] = int(ends[lo].sum())
    for hi in scales[i + 1 :]:
        bad = int((ends[hi] & ~ends[lo]).sum())
        out["violations"][f"{lo}->{hi}"] = bad
print(json.dumps(out, indent=1))
np.savez(
    f"/tmp/s42/ends_{model}.npz",
    scales=np.array(scales),
    copies=copies,
    flagged=plain.flagged(0.1).any(axis=0),
    **{f"s{s}": ends[s] for s in scales},
)
