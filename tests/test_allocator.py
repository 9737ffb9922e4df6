"""models/allocator.py: with freed memory kept in the heap, a large tensor allocated again reuses pages that are
already mapped instead of faulting every page in afresh (what made sampling 13% slower on a CPU)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import resource, sys
import torch
from cpsample.models.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.ones(64 << 20, dtype=torch.uint8)  # 64 MB, above glibc's largest default mmap threshold (32 MB)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.ones(64 << 20, dtype=torch.uint8)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> tuple[str, int]:
    kept, faults = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return kept, int(faults)


def test_freed_memory_is_kept_for_reuse_instead_of_faulted_in_again():
    assert resource.getpagesize() == 4096
    pages = 5 * (64 << 20) // 4096
    kept, faults = page_faults("keep")
    # measured: one reuse's pages (16,384) with it, every reuse's (81,925) without
    assert kept == "True" and faults < pages * 2 // 5, f"{faults} page faults in 5 reuses of 64 MB"
    huge_pages = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if huge_pages.exists() and "[always]" in huge_pages.read_text():
        return  # the kernel backs fresh mappings with 2 MB pages: far fewer faults to compare with
    _, default_faults = page_faults("default")
    assert default_faults >= pages * 9 // 10, "without it every page is faulted in again (the cost it removes)"
