"""Process setup: the allocator setting the finetune and evaluate stages apply."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from finetuner.runtime import MALLOC_ENV, glibc_version, reuse_freed_memory

BLOCKS = 20
ALLOCATE_AND_FREE = f"""
import resource, sys
import torch
from finetuner.runtime import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({BLOCKS}):
    torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB: over glibc's 32 MiB mmap limit
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV + ("GLIBC_TUNABLES",)}
    done = subprocess.run([sys.executable, "-c", ALLOCATE_AND_FREE, mode], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    applied, faults = done.stdout.split()[-2:]
    return applied == "True", int(faults)


@pytest.mark.skipif(glibc_version() is None, reason="mallopt is glibc's")
def test_large_freed_blocks_are_reused_not_faulted_in_again():
    _, default = page_faults("default")
    applied, reused = page_faults("reuse")
    if not applied and glibc_version() < (2, 36):
        pytest.skip(f"glibc {glibc_version()} refuses an mmap threshold over 32 MiB")
    assert applied
    if default < BLOCKS * (64 * 2**20 // os.sysconf("SC_PAGE_SIZE")) // 2:
        pytest.skip("transparent huge pages leave too few page faults to compare")
    # default: each 64 MiB block is a fresh mmap, faulted in again; reused: the heap keeps them
    # (measured: 20 x 16,384 faults by default, about 3 x 16,384 reused)
    assert reused * 2 < default, (reused, default)


def test_malloc_tuning_in_the_environment_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert not reuse_freed_memory()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert not reuse_freed_memory()


def test_glibc_version_is_the_running_one():
    library, version = platform.libc_ver()
    if library != "glibc":
        pytest.skip("not glibc")
    assert glibc_version() == tuple(int(part) for part in version.split(".")[:2])
