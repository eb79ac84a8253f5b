"""Exports side by side (`merino_mobile.parallel`): real spawned worker processes.

The jobs are standard-library functions (picklable by reference, as exporters are), so these tests
exercise the pool itself in seconds; `test_profile` runs real exports through it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from merino_mobile.errors import UserError
from merino_mobile.latency.grid import make_grid
from merino_mobile.parallel import Job, default_workers, run_jobs


def test_results_come_back_in_job_order_from_other_processes():
    seen = []
    jobs = [Job("a", os.getpid, cost=1), Job("b", divmod, (17, 5), cost=9),
            Job("c", os.getpid, cost=5)]
    out = run_jobs(jobs, workers=2, progress=lambda m, d, n: seen.append((m, d, n)))
    assert out[1] == (3, 2)
    assert os.getpid() not in (out[0], out[2])  # spawned workers, not this process
    assert seen[0] == ("exporting 3 programs", 0, 3) and [d for _, d, _ in seen] == [0, 1, 2, 3]


def test_one_worker_runs_in_this_process():
    assert run_jobs([Job("a", os.getpid), Job("b", os.getpid)], workers=1) == [os.getpid()] * 2


def test_a_failing_job_raises_its_error_and_stops_the_others():
    """The UserError of one export reaches the caller; the hour-long job beside it is ended."""
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="no search space at /nonexistent"):
        run_jobs([Job("forever", time.sleep, (3600,), cost=9),
                  Job("bad", make_grid, (Path("/nonexistent/space.toml"),), cost=1)], workers=2)
    assert time.perf_counter() - t0 < 120


def test_a_worker_killed_by_the_system_is_a_clear_error():
    """os.abort stands for the kernel's out-of-memory killer: the worker dies without a word."""
    with pytest.raises(UserError, match="export worker died.*MERINO_MOBILE_JOBS=1"):
        run_jobs([Job("dies", os.abort, cost=9), Job("fine", os.getpid)], workers=2)


def test_worker_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("MERINO_MOBILE_JOBS", "3")
    assert default_workers() == 3
    monkeypatch.setenv("MERINO_MOBILE_JOBS", "many")
    with pytest.raises(UserError, match="MERINO_MOBILE_JOBS='many'"):
        default_workers()
    monkeypatch.delenv("MERINO_MOBILE_JOBS")
    assert default_workers() == len(os.sched_getaffinity(0))


def test_two_workers_export_real_programs_into_the_cache(tmp_path):
    """The profile's export jobs, run by two workers: complete programs that ExecuTorch loads."""
    from executorch.extension.pybindings import _C

    from merino_mobile.latency.programs import export_jobs

    space = tmp_path / "tiny.toml"
    space.write_text("schema_version = 1\nmax_blocks = 1\ndepth = [1, 2]\n"
                     "widths = [64, 128]\nffn_ratios = [2.0]\nhead_dim = 32\nvocab = 256\n"
                     "context = 64\n")
    grid = make_grid(space, "full", [16], [])
    points = grid.points()
    halves = [points[: len(points) // 2], points[len(points) // 2:]]
    cache = tmp_path / "cache"
    jobs = export_jobs(halves, grid, "executorch", "fp32", cache, True)
    assert len(jobs) == 2
    out = run_jobs(jobs, workers=2)
    for (path, specs), half in zip(out, halves, strict=True):
        assert path.parent == cache and len(specs) == len(half)
        assert _C._load_program(str(path)).num_methods() == len(half)
    assert sorted(p.suffix for p in cache.iterdir()) == [".pte", ".pte"]
    assert export_jobs(halves, grid, "executorch", "fp32", cache, True) == []  # cached now
