"""calibrate's watched screen of 600 `bundled` images and five probes, with glibc's defaults or other malloc settings
(Finding 29). Usage: OMP_NUM_THREADS=1 python ab_screen_probes.py default|mmap+trim|trim"""

import ctypes
import resource
import sys
import time

import numpy as np

from cpsample.calibration import Goal, GridSettings, seek

mode = sys.argv[1]
libc = ctypes.CDLL("libc.so.6")
if "mmap" in mode:
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
if "trim" in mode:
    libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD (alone it also fixes the mmap threshold at 128 KiB)
settings = GridSettings(model="bundled", classifier="bundled", steps=50)
seeker = seek.Seeker(settings, Goal())
before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
plain = seeker.keep_plain(settings.seed, 600, progress=False, watch=True)
screened = time.perf_counter()
copies = np.asarray(seeker.detector(plain.images.numpy()), dtype=bool)
probe = seek.Probe(seeker, plain, copies)
for scale in (30.0, 7.5, 15.0, 21.2, 25.2):
    probe(0.1, scale)
probed, after = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
print(
    f"{mode} screen {screened - started:.1f} probes {probed - screened:.1f} "
    f"user {after.ru_utime - before.ru_utime:.1f} sys {after.ru_stime - before.ru_stime:.1f} "
    f"minflt {after.ru_minflt - before.ru_minflt}"
)
