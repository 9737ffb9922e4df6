"""One `generate` run (plain or one-stage CPSample) with glibc's defaults or with freed memory kept (Finding 29).
Usage: OMP_NUM_THREADS=1 python ab_generate.py default|mallopt MODEL N STEPS GUARD, where GUARD is none or
alpha=0.1,scale=84.9,tau=0.001,max_t=700 (the RGB classifier was a copy of the bundled one at /tmp/rgbclf)."""

import resource
import sys
import time

from cpsample.models.allocator import keep_freed_memory
from cpsample.sampling.adapters import load_adapter
from cpsample.sampling.generate import SampleConfig, generate
from cpsample.sampling.spec import GuardSpec

mode, model, n, steps, guard = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if mode == "mallopt":
    assert keep_freed_memory()
adapter = load_adapter(model)
knobs = {key: float(value) for key, value in (item.split("=") for item in guard.split(","))} if guard != "none" else {}
spec = GuardSpec.create("cpsample", **knobs) if knobs else "none"
classifier = "/tmp/rgbclf" if model == "bundled-rgb" else "bundled"
generate(adapter, "none", SampleConfig(n=8, steps=2, progress=False))
before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
generate(adapter, spec, SampleConfig(n=n, steps=steps, progress=False, batch_size=250), classifier)
after = resource.getrusage(resource.RUSAGE_SELF)
print(
    f"{mode} {model} {guard} wall {time.perf_counter() - started:.2f} user {after.ru_utime - before.ru_utime:.2f} "
    f"sys {after.ru_stime - before.ru_stime:.2f} minflt {after.ru_minflt - before.ru_minflt}"
)
