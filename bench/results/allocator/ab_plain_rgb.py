"""Plain sampling of 128 RGB images (20 steps, one batch) with glibc's defaults or with freed memory kept
(bench/README, Finding 29). Usage: OMP_NUM_THREADS=1 python ab_plain_rgb.py default|mallopt"""

import resource
import sys
import time

from cpsample.models.allocator import keep_freed_memory
from cpsample.sampling.adapters import load_adapter
from cpsample.sampling.generate import SampleConfig, generate

if sys.argv[1] == "mallopt":
    assert keep_freed_memory()
adapter = load_adapter("bundled-rgb")
generate(adapter, "none", SampleConfig(n=8, steps=2, progress=False))
before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
generate(adapter, "none", SampleConfig(n=128, steps=20, progress=False, batch_size=128))
after = resource.getrusage(resource.RUSAGE_SELF)
print(
    f"{sys.argv[1]} wall {time.perf_counter() - started:.2f} user {after.ru_utime - before.ru_utime:.2f} "
    f"sys {after.ru_stime - before.ru_stime:.2f} minflt {after.ru_minflt - before.ru_minflt}"
)
