"""The fleet's exports: every missing program lowered as a Ray task, anywhere in the cluster.

The driver's program cache (`<workspace>/.merino-mobile/cache/`, `merino_mobile.latency.programs`)
stays the one place programs are kept: a program is content-addressed there by its points,
quantization, runtime and toolchain versions, so the devices of one run that need the same
program (the same runtime and quantization, whatever the phone) get one export between them, and
a later run, local or on the fleet, reuses it. `export_missing` sends one task per missing program
(the costliest first), each task lowers it into its node's own scratch folder and returns the
bytes with the toolchain versions that built them, and the driver writes them into its cache
under the name it computes itself. A node whose toolchain differs from the driver's is refused:
its program would be another program than the one the cache name promises.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from merino_mobile.errors import UserError
from merino_mobile.fleet.shipping import NodeCache, ProgramFiles
from merino_mobile.latency.grid import Grid
from merino_mobile.latency.programs import _export_cost, export_batch, program_path
from merino_mobile.latency.store import Point

Progress = Callable[[str, int, int], None]  # (message, done, total)


@dataclass(frozen=True)
class ProgramJob:
    """One program a run needs: its batch of points and how it is lowered."""

    batch: tuple[Point, ...]
    grid: Grid
    runtime: str
    quant: str
    replicated: bool

    def path(self, cache_dir: Path) -> Path:
        return program_path(self.batch, self.grid, self.runtime, self.quant, cache_dir,
                            self.replicated)

    @property
    def label(self) -> str:
        return f"{len(self.batch)} micro-model{'s' * (len(self.batch) > 1)}"


def export_task(job: ProgramJob, cache_dir: str | None) -> dict[str, Any]:
    """Runs in a Ray worker: lower one program in this node's scratch folder, return its bytes
    and the toolchain that built it."""
    import ray
    import torch

    from merino_mobile.formats import for_runtime
    from merino_mobile.toolchain import quiet_dependencies

    quiet_dependencies()
    torch.set_num_threads(1)  # one core per export: Ray gives the node's others to other tasks
    t0 = time.perf_counter()
    path, _ = export_batch(job.batch, job.grid, job.runtime, job.quant,
                           NodeCache(cache_dir).exports, job.replicated)
    return {"program": ProgramFiles.read(path), "seconds": time.perf_counter() - t0,
            "versions": for_runtime(job.runtime).toolchain(),
            "node": ray.util.get_node_ip_address(), "pid": os.getpid()}


@dataclass
class ExportReport:
    """What the export phase did: programs built by tasks, found cached, and where."""

    built: int = 0
    cached: int = 0
    seconds: float = 0.0
    tasks: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        by_node: dict[str, int] = {}
        for t in self.tasks:
            by_node[t["node"]] = by_node.get(t["node"], 0) + 1
        return {"built": self.built, "cached": self.cached, "seconds": self.seconds,
                "by_node": by_node, "tasks": self.tasks}


def missing_jobs(jobs: Sequence[ProgramJob], cache_dir: Path) -> tuple[list[ProgramJob], int]:
    """The jobs whose program is not in the driver's cache, each once; and how many are."""
    out: list[ProgramJob] = []
    seen: set[Path] = set()
    cached = 0
    for job in jobs:
        path = job.path(cache_dir)
        if path in seen:
            continue
        seen.add(path)
        if path.exists():
            cached += 1
        else:
            out.append(job)
    return out, cached


def export_missing(ray: ModuleType, jobs: Sequence[ProgramJob], cache_dir: Path,
                   progress: Progress | None = None, node_cache: str | None = None,
                   cpus_per_task: float = 1.0) -> ExportReport:
    """Export every program of `jobs` missing from the driver's cache as Ray tasks (each asks
    for `cpus_per_task` CPUs: one, since a lowering is single-threaded); each lands in the cache
    as it arrives (a stopped run keeps the finished ones)."""
    from merino_mobile.formats import for_runtime

    todo, cached = missing_jobs(jobs, cache_dir)
    report = ExportReport(cached=cached)
    if not todo:
        return report
    t0 = time.perf_counter()
    todo.sort(key=lambda j: -_export_cost(j.batch))  # the last task to finish is a short one
    task = ray.remote(export_task).options(num_cpus=cpus_per_task, max_retries=1)
    pending = {task.remote(job, node_cache): job for job in todo}
    if progress:
        progress(f"exporting {len(todo)} programs on the fleet", 0, len(todo))
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                out = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, UserError):
                    raise e.cause from None
                raise
            except ray.exceptions.RayError as e:  # its worker or node died (out of memory)
                lines = [ln for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
                raise UserError(f"the export of {job.label} died on the fleet, twice "
                                f"({lines[-1].strip()[:200]}); every program exported before "
                                f"is kept: rerun the same command to continue") from None
            mine = for_runtime(job.runtime).toolchain()
            if out["versions"] != mine:
                raise UserError(f"node {out['node']} exports with {out['versions']}, this host "
                                f"with {mine}: install the same versions on every host of the "
                                f"fleet (pip install -e \".[fleet]\" from one checkout)")
            path = job.path(cache_dir)
            out["program"].write(path.parent, path.name)
            report.built += 1
            report.tasks.append({"program": path.name, "node": out["node"], "pid": out["pid"],
                                 "seconds": out["seconds"]})
            if progress:
                progress(f"exported {job.label} on {out['node']}", report.built, len(todo))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        report.seconds = time.perf_counter() - t0
    return report
