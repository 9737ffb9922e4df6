"""bench/profile_guard.py with the bfloat16 screen off (Finding 29, before the guard stopped screening without AMX).
Usage: OMP_NUM_THREADS=1 python profile_without_screen.py ARGS OF profile_guard.py"""

import sys
from pathlib import Path

import cpsample.sampling.guards.cpsample as guard_module

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/
guard_module._screens_fast = lambda device: False
profile_guard = __import__("profile_guard")
profile_guard.main()
