"""The core count threads are sized by: CPU affinity, and a container's CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labeler.model.runtime import available_cores

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", AFFINITY),  # no quota
        ("100000 100000\n", 1),  # docker run --cpus 1
        ("150000 100000\n", min(AFFINITY, 2)),  # 1.5 CPUs: two threads may run
        (f"{(AFFINITY + 8) * 100000} 100000\n", AFFINITY),  # a quota above the cores
        ("garbage\n", AFFINITY),
    ],
)
def test_a_container_quota_limits_the_cores(tmp_path: Path, cpu_max: str, expected: int) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert available_cores(path) == expected


def test_without_cgroup_v2_the_affinity_counts(tmp_path: Path) -> None:
    assert available_cores(tmp_path / "missing") == AFFINITY
