"""Exports side by side: CPU-bound jobs spread over worker processes, nothing timed meanwhile.

Lowering a program (torch.export, quantization, XNNPACK partitioning, serialization) is
single-threaded Python, so on a machine with N cores N exports run side by side about N times
faster. Callers run every export first and time afterwards, so measurements never share the CPU
with an export.

    results = run_jobs([Job("program a", export_fn, (args...), cost=3.0), ...], workers=2)

Jobs are module-level functions with picklable arguments (workers are spawned, not forked: a
fork of a process with torch's threads running is unsafe); the costliest go first so the last one
to finish is short. A job's exception (a UserError included) is raised in the caller after the
other workers are stopped; a worker killed by the system (out of memory) is an error naming the
job; Ctrl-C stops every worker at once. Finished jobs keep their results: exporters write under a
temporary name and rename, so a stopped export leaves nothing half-written.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from merino_mobile.errors import UserError

Progress = Callable[[str, int, int], None]  # (message, done, total)


@dataclass(frozen=True)
class Job:
    """One export: `fn(*args)` in a worker; `cost` orders the queue (biggest first)."""

    label: str
    fn: Callable[..., Any]
    args: tuple = ()
    cost: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)


def default_workers() -> int:
    """The cores this process may use ($MERINO_MOBILE_JOBS overrides)."""
    env = os.environ.get("MERINO_MOBILE_JOBS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise UserError(f"MERINO_MOBILE_JOBS={env!r} is not a number of processes") from None
    return max(1, len(os.sched_getaffinity(0)))


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group: the parent alone decides, and stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from merino_mobile.toolchain import quiet_dependencies

    quiet_dependencies()
    torch.set_num_threads(1)  # one core per export: the other workers have the rest


def _call(job: Job) -> Any:
    return job.fn(*job.args, **job.kwargs)


def run_jobs(jobs: Sequence[Job], workers: int | None = None,
             progress: Progress | None = None) -> list[Any]:
    """Results of `jobs`, in their order. One worker (or one job) runs in this process."""
    workers = min(default_workers() if workers is None else max(1, workers), len(jobs))
    results: list[Any] = [None] * len(jobs)
    if progress:
        progress(f"exporting {len(jobs)} programs", 0, len(jobs))
    if workers <= 1:
        for i, job in enumerate(jobs):
            results[i] = _call(job)
            if progress:
                progress(f"exported {job.label}", i + 1, len(jobs))
        return results
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].cost)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker)
    futures: dict[Future, int] = {}
    try:
        futures = {pool.submit(_call, jobs[i]): i for i in order}
        pending = set(futures)
        done_count = 0
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except BrokenProcessPool:
                    raise UserError(f"an export worker died while exporting {jobs[i].label} "
                                    f"(killed by the system, often for lack of memory); rerun "
                                    f"with fewer processes: MERINO_MOBILE_JOBS=1") from None
                done_count += 1
                if progress:
                    progress(f"exported {jobs[i].label}", done_count, len(jobs))
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()
    return results


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (an export can take minutes)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # gone after shutdown
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
