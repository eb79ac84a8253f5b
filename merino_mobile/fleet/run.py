"""Profiling several devices at once on a Ray fleet, through the one profile run the project has.

    profile_fleet(ws, ["pixel7", "galaxy-s23"], cluster="auto")

1. Every device gets its actor (actor.py) on the node that has it, wrapped on the driver by a
   `RemoteDevice` (remote.py); a device no live node has is a one-line error before anything
   starts.
2. Each device is fingerprinted, and the programs its run will time are collected
   (`ProfileRun.export_batches`); the missing ones are exported as Ray tasks across the cluster,
   each program once for all the devices that need it (exports.py), before any device times
   anything: timing never shares a node with an export of this run.
3. One driver thread per device runs `run_profile` unchanged, on a `FleetTarget` whose device is
   the remote one: the same lock, store, sentinel, passes and table as a local profile, and every
   measurement is committed by the driver to the one store as soon as it reaches the driver (per
   method for backends that report each result as it finishes, such as the host; per request for
   those that report a request's results together, such as a phone's runner; see docs/fleet.md).

Faults: a device that vanishes ends its own run with its usual message while the others go on;
an actor or node that dies ends that device's run with `WorkerLost`, after which the device is
started again (`restarts` times, on a node that still has it) and resumes from the store; a
driver that dies takes its actors with it (Ray ends an actor with its owner), and the rerun
continues from the store. Nothing stored is measured again; at most what was in flight is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from merino_mobile.device.base import Device
from merino_mobile.errors import UserError
from merino_mobile.fleet.cluster import check_devices_have_nodes, connect, node_devices
from merino_mobile.fleet.exports import ExportReport, ProgramJob, export_missing
from merino_mobile.fleet.remote import ProgramShelf, RemoteDevice, WorkerLost
from merino_mobile.formats import check_runtime_quant
from merino_mobile.latency.grid import Grid, make_grid
from merino_mobile.latency.profile import ProfileReport, ProfileRun, run_profile
from merino_mobile.latency.store import Store
from merino_mobile.target import Target, resolve_target
from merino_mobile.workspace import Workspace

SCHEMA_VERSION = 1
# (device name, or None for the fleet's own export phase; message, done, total)
FleetProgress = Callable[[str | None, str, int, int], None]


@dataclass(frozen=True)
class FleetTarget(Target):
    """A Target whose device is a fleet device: `open()` gives the remote one."""

    remote: Any = field(default=None, repr=False, compare=False)

    def open(self) -> Device:
        return self.remote


class LentDevice:
    """A fleet device lent to a local code path that opens and cleans up its device more than
    once (`compare` opens it to read its runtimes, then again to bench): its `cleanup` leaves the
    device open, and the fleet cleans it up (ending its actor) when the device's whole job is
    done (`_Fleet.lend`). Everything else is the `RemoteDevice`'s."""

    def __init__(self, remote: RemoteDevice) -> None:
        self.remote = remote

    def __getattr__(self, name: str) -> Any:
        return getattr(self.remote, name)

    def cleanup(self) -> None:
        """Nothing yet: the fleet cleans the device up after the job."""


@dataclass
class FleetReport:
    """What `profile_fleet` did: each device's ProfileReport or its one-line error."""

    reports: dict[str, ProfileReport]
    errors: dict[str, str]
    exports: ExportReport
    order: list[str]
    restarts: dict[str, int] = field(default_factory=dict)
    shipped: int = 0
    reused: int = 0
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """`profile --json` with several devices: `devices` maps each name to its report (the
        single-device object) or to {"error": message}."""
        devices = {n: self.reports[n].to_json() if n in self.reports
                   else {"error": self.errors[n]} for n in self.order}
        return {"schema_version": SCHEMA_VERSION, "devices": devices,
                "exports": self.exports.to_json(),
                "programs": {"shipped": self.shipped, "reused_on_node": self.reused},
                "restarts": self.restarts, "wall_s": self.wall_s}


class _Fleet:
    """One fleet profile: the devices' actors, their threads, and stopping them together."""

    def __init__(self, ray: ModuleType, ws: Workspace, targets: list[Target], grid: Grid | None,
                 progress: FleetProgress | None, passes: int | None, restarts: int,
                 node_cache: str | None, max_redo: int) -> None:
        self.ray, self.ws, self.targets, self.grid = ray, ws, targets, grid
        self.progress, self.passes, self.restarts = progress, passes, restarts
        self.node_cache, self.max_redo = node_cache, max_redo
        self.shelf = ProgramShelf(ray)
        self.remotes: dict[str, RemoteDevice] = {}
        self.errors: dict[str, str] = {}
        self.restarted: dict[str, int] = {}
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def _say(self, device: str | None, message: str, done: int = 0, total: int = 0) -> None:
        if self.progress:
            self.progress(device, message, done, total)

    def open(self, t: Target) -> RemoteDevice:
        remote = RemoteDevice(self.ray, t.profile, t.runtime, self.shelf, self.node_cache)
        with self._lock:
            self.remotes[t.name] = remote
        return remote

    def start(self) -> list[Target]:
        """Every device's actor, started together; the devices that opened."""
        for t in self.targets:
            try:
                self.open(t)
            except UserError as e:
                self.errors[t.name] = str(e)
        ready = []
        for t in self.targets:
            if t.name in self.remotes:
                try:
                    self.remotes[t.name].wait_open()
                    ready.append(t)
                    self._say(t.name, f"opened on {self.remotes[t.name].node}")
                except UserError as e:
                    self.errors[t.name] = str(e)
                    self.remotes.pop(t.name).kill()
        return ready

    def program_jobs(self, ready: list[Target]) -> tuple[list[Target], list[ProgramJob]]:
        """The programs the devices' runs will time; a device whose fingerprint another one
        of this run has (the same table: model, OS, runtime, threads) is refused."""
        jobs: list[ProgramJob] = []
        keep: list[Target] = []
        seen: dict[tuple[str, str, str], str] = {}
        store = Store.open(self.ws.state)
        try:
            for t in ready:
                remote = self.remotes[t.name]
                try:
                    fp = remote.fingerprint(t.runtime, t.quant)
                except UserError as e:
                    self.errors[t.name] = str(e)
                    remote.cleanup()
                    continue
                key = (fp.key, t.runtime, t.quant)
                if key in seen:
                    self.errors[t.name] = (
                        f"{t.name} measures as {seen[key]} does (the same fingerprint: model, "
                        f"OS, runtime, threads), so their latency table is one: profile one of "
                        f"them, or give them different threads")
                    remote.cleanup()
                    continue
                seen[key] = t.name
                keep.append(t)
                run = ProfileRun(self.ws, remote, store, fp, self.grid, None, None,
                                 self.passes or t.profile.measure.passes)
                jobs += [ProgramJob(tuple(b), self.grid, t.runtime, t.quant, remote.replicates)
                         for b in run.export_batches()]
        finally:
            store.close()
        return keep, jobs

    def profile(self, t: Target) -> ProfileReport:
        """One device's profile, started again on a lost worker (`restarts` times)."""
        remote = self.remotes[t.name]
        while True:
            try:
                return run_profile(
                    self.ws, FleetTarget(t.ws, t.profile, t.format, t.quant, remote=remote),
                    t.runtime, t.quant, self.grid, max_redo=self.max_redo, workers=1,
                    passes=self.passes,
                    progress=lambda m, d, n, name=t.name: self._say(name, m, d, n))
            except WorkerLost as e:
                used = self.restarted.get(t.name, 0)
                if used >= self.restarts or self.stopping.is_set():
                    raise
                if t.name not in node_devices(self.ray):
                    raise UserError(f"{e}; no live node has {t.name} now") from None
                self.restarted[t.name] = used + 1
                self._say(t.name, f"worker lost ({e.reason}); resuming on a new one")
                remote = self.open(t).wait_open()

    def run(self, ready: list[Target], job: Callable[[Target], Any] | None = None
            ) -> dict[str, Any]:
        """`job` (default: `profile`) on every ready device at once, one thread each; Ctrl-C
        stops them all."""
        reports: dict[str, Any] = {}
        if not ready:
            return reports
        pool = ThreadPoolExecutor(len(ready), thread_name_prefix="fleet")
        futures: dict[Future, str] = {pool.submit(job or self.profile, t): t.name
                                      for t in ready}
        try:
            pending = set(futures)
            while pending:
                # a timeout, so that Ctrl-C reaches this thread while the devices work
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    name = futures[fut]
                    try:
                        reports[name] = fut.result()
                    except UserError as e:
                        self.errors[name] = str(e)
        except BaseException:
            self.stop()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return reports

    def lend(self, job: Callable[[FleetTarget], Any]) -> Callable[[Target], Any]:
        """`job` as a device's job for `run`: called with a FleetTarget whose `open()` lends the
        device (`LentDevice`); the device is cleaned up, and its actor ended, when it returns."""
        def one(t: Target) -> Any:
            remote = self.remotes[t.name]
            try:
                return job(FleetTarget(t.ws, t.profile, t.format, t.quant,
                                       remote=LentDevice(remote)))
            finally:
                remote.cleanup()

        return one

    def drop(self, name: str, error: str) -> None:
        """Give up on one started device: its error, and its actor ended."""
        self.errors[name] = error
        with self._lock:
            remote = self.remotes.pop(name, None)
        if remote is not None:
            remote.cleanup()

    def stop(self) -> None:
        """End every actor: a device's thread then ends with WorkerLost, which is not retried."""
        self.stopping.set()
        with self._lock:
            remotes = list(self.remotes.values())
        for r in remotes:
            r.kill()


def profile_fleet(ws: Workspace, devices: Sequence[str | Target], runtime: str = "executorch",
                  quant: str = "fp32", grid: Grid | None = None, *, cluster: str = "auto",
                  progress: FleetProgress | None = None, passes: int | None = None,
                  restarts: int = 1, node_cache: str | None = None, max_redo: int = 2
                  ) -> FleetReport:
    """Profile `devices` at once on the fleet `cluster` (auto or HOST:PORT): see the module
    docstring. A device's failure is its entry in `errors`; the others go on. `node_cache`: the
    nodes' program shelf (default: each node's own, `shipping.default_node_cache`)."""
    check_runtime_quant(runtime, quant, profiled=True)
    targets = [resolve_target(ws, d, quant=quant, runtime=runtime) for d in devices]
    names = [t.name for t in targets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--device {', '.join(twice)} given more than once; name each device "
                        f"once")
    grid = grid or make_grid(ws.find("search", "default", ".toml"), "quick")
    t0 = time.perf_counter()
    ray = connect(cluster)
    check_devices_have_nodes(ray, names)
    fleet = _Fleet(ray, ws, targets, grid, progress, passes, restarts, node_cache, max_redo)
    try:
        ready, jobs = fleet.program_jobs(fleet.start())
        exports = export_missing(ray, jobs, ws.state / "cache",
                                 progress=lambda m, d, n: fleet._say(None, m, d, n),
                                 node_cache=node_cache)
        reports = fleet.run(ready)
    except BaseException:
        fleet.stop()
        raise
    return FleetReport(reports, fleet.errors, exports, names, dict(fleet.restarted),
                       fleet.shelf.shipped, fleet.shelf.reused, time.perf_counter() - t0)


@dataclass
class FleetBench:
    """What `bench_fleet` did: each device's BenchReport or its one-line error."""

    reports: dict[str, Any]
    errors: dict[str, str]
    order: list[str]
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """`bench --json` with several devices: `devices` maps each name to its report (the
        single-device object) or to {"error": message}."""
        return {"schema_version": SCHEMA_VERSION,
                "devices": {n: self.reports[n].to_json() if n in self.reports
                            else {"error": self.errors[n]} for n in self.order},
                "wall_s": self.wall_s}


def bench_fleet(ws: Workspace, artifact: Any, devices: Sequence[str], *, cluster: str = "auto",
                prompt: int, generate: int, repeat: int,
                progress: FleetProgress | None = None) -> FleetBench:
    """Bench one artifact on several devices at once on the fleet: one actor per device on its
    node (the artifact shipped to each node once, as a profile's programs are), one driver
    thread per device running `bench_artifact` unchanged, each measurement stored by the driver
    the moment it returns. A device's failure is its entry in `errors`; the others go on."""
    from pathlib import Path

    from merino_mobile.deploy.bench import bench_artifact, target_for

    artifact = Path(artifact)
    targets = [target_for(ws, d, artifact) for d in devices]
    names = [t.name for t in targets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--device {', '.join(twice)} given more than once; name each device "
                        f"once")
    t0 = time.perf_counter()
    ray = connect(cluster)
    check_devices_have_nodes(ray, names)
    fleet = _Fleet(ray, ws, targets, None, progress, None, 0, None, 0)

    def one(t: Target) -> Any:
        remote = fleet.remotes[t.name]
        try:
            fleet._say(t.name, f"benching {artifact.name}")
            return bench_artifact(ws, artifact,
                                  FleetTarget(t.ws, t.profile, t.format, t.quant, remote=remote),
                                  prompt=prompt, generate=generate, repeat=repeat, dev=remote)
        finally:
            remote.cleanup()

    try:
        reports = fleet.run(fleet.start(), one)
    except BaseException:
        fleet.stop()
        raise
    return FleetBench(reports, fleet.errors, names, time.perf_counter() - t0)
