"""Fleet benchmark: a grid's exports on one worker versus N workers of a local Ray cluster (and
the wall time projected for larger clusters from the measured cost of each program), then two
simulated phones profiled at once on the fleet versus one after the other without it.

    nice python benchmarks/fleet.py [--space search/default.toml] [--max-width 512]
        [--context 128 ...] [--prompt 0 ...] [--workers N] [--project 4 8 16 32] [--no-phones]

Part 1 lowers the grid's programs (ExecuTorch fp32, the programs a phone times) twice into empty
caches, through `merino_mobile.fleet.export_missing`: once with each task asking for all N CPUs
(so one runs at a time: one worker), once with one CPU each (N side by side). Both runs start
with warm workers (torch and ExecuTorch imported), so they compare the exports, not the imports.
The projection schedules the one-worker run's per-program seconds on M workers, costliest first
(each program is one single-threaded task), assuming each worker has a core of its own, as the
hosts of a real cluster do: it is bounded below by the costliest program. The machine's load
average before each part is recorded: on a shared machine the N-worker run competes with
whatever else runs.

Part 2 profiles two loopback phones (tests/adbd: the adbd protocol on 127.0.0.1 and a runner that
executes the program with ExecuTorch on this host's CPU), each with one runtime thread, from the
programs part 1 built: `run_profile` on one then the other, then `profile_fleet` on both at once.
The simulated phones' runner work runs on this machine's cores, which the two share: on real
phones, each phone times on its own CPU.

Writes benchmarks/results/fleet.json. Everything listens on the loopback only.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA_VERSION = 1
PHONES = ("bench-phone-a", "bench-phone-b")


def lpt_makespan(costs: list[float], workers: int) -> float:
    """Wall time of `costs` on `workers`, each next-costliest task to the least loaded one."""
    loads = [0.0] * max(1, workers)
    heapq.heapify(loads)
    for c in sorted(costs, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + c)
    return max(loads)


def warm_workers(ray, n: int) -> None:
    """n tasks at once, so n workers have imported torch and ExecuTorch before timing."""

    def _import() -> int:
        import executorch.exir  # noqa: F401
        import torch  # noqa: F401

        time.sleep(1.0)  # hold the worker, so the n tasks land on n workers
        return os.getpid()

    task = ray.remote(_import).options(num_cpus=1)
    ray.get([task.remote() for _ in range(n)])


def phone_profile(devices: Path, name: str, address: str, key: Path) -> None:
    (devices / f"{name}.toml").write_text(f"""schema_version = 1
name = "{name}"
transport = "adb"
runtimes = ["executorch"]
threads = 1
cpus = []

[adb]
address = "{address}"
adbkey = "{key}"
remote_dir = "/data/local/tmp/merino-mobile"
runner = "{ROOT / 'tests' / 'adbd' / 'executor_runner.py'}"

[cooldown]
max_temp_c = 45.0
wait_s = 0.2
max_wait_s = 5.0

[sentinel]
every = 20
threshold = 0.5

[measure]
warmup = 1
min_repeats = 3
max_repeats = 10
target_spread = 1.3
max_seconds = 1.0
timeout_s = 120.0
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(ROOT / "search" / "default.toml"))
    ap.add_argument("--max-width", type=int, default=None,
                    help="keep the space's widths up to this (a smaller grid)")
    ap.add_argument("--context", type=int, action="append", default=[])
    ap.add_argument("--prompt", type=int, action="append", default=[])
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--project", type=int, nargs="*", default=[4, 8, 16, 32])
    ap.add_argument("--no-phones", action="store_true", help="part 1 only")
    ap.add_argument("--out", default=str(HERE / "results" / "fleet.json"))
    args = ap.parse_args()

    for k, v in (("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"), ("RAY_USAGE_STATS_ENABLED", "0"),
                 ("RAY_AUTH_MODE", "token")):
        os.environ.setdefault(k, v)
    tmp = Path(tempfile.mkdtemp(prefix="mm-fleet-bench-"))
    os.environ["MERINO_MOBILE_FLEET_CACHE"] = str(tmp / "node")
    import ray

    from merino_mobile.fleet import ProgramJob, export_missing, profile_fleet
    from merino_mobile.fleet.cluster import NAMESPACE, device_resource
    from merino_mobile.latency.grid import describe_grid, make_grid
    from merino_mobile.latency.profile import run_profile
    from merino_mobile.latency.programs import batches
    from merino_mobile.space import load_space
    from merino_mobile.toolchain import package_versions, quiet_dependencies
    from merino_mobile.workspace import Workspace

    quiet_dependencies()
    console = Console()
    space = load_space(Path(args.space))
    if args.max_width:
        space = dataclasses.replace(space, widths=tuple(w for w in space.widths
                                                        if w <= args.max_width))
    grid = make_grid(space, "quick", args.context, [p for p in args.prompt if p > 0]
                     if args.prompt else None)
    console.print(describe_grid(grid))
    jobs = [ProgramJob(tuple(b), grid, "executorch", "fp32", False)
            for b in batches(grid.points(), grid, "fp32", False)]
    n = max(1, args.workers)
    ray.init(num_cpus=n, resources={device_resource(p): 1 for p in PHONES},
             include_dashboard=False, _node_ip_address="127.0.0.1", namespace=NAMESPACE,
             log_to_driver=False, logging_level=logging.ERROR)
    result: dict = {"schema_version": SCHEMA_VERSION, "grid": grid.to_json(),
                    "points": len(grid.points()), "programs": len(jobs), "workers": n,
                    "machine": {"cpus": len(os.sched_getaffinity(0)),
                                "processor": platform.processor() or platform.machine()},
                    "versions": package_versions(("torch", "executorch", "ray"))}
    try:
        warm_workers(ray, n)
        runs: dict[str, dict] = {}
        caches: dict[str, Path] = {}
        for label, cpus in (("one worker", float(n)), (f"{n} workers", 1.0)):
            cache = tmp / f"cache-{cpus:g}"
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            rep = export_missing(ray, jobs, cache, node_cache=str(tmp / f"node-{cpus:g}"),
                                 cpus_per_task=cpus)
            runs[label] = {"wall_s": time.perf_counter() - t0, "built": rep.built,
                           "task_s": [t["seconds"] for t in rep.tasks],
                           "load_avg_before": load}
            caches[label] = cache
            console.print(f"{label}: {rep.built} programs in {runs[label]['wall_s']:.1f} s "
                          f"(load average {load:.1f} before)")
        costs = runs["one worker"]["task_s"]
        projected = {m: lpt_makespan(costs, m) for m in args.project}
        result["exports"] = {"runs": runs, "per_program_s": costs,
                             "projected_wall_s": projected}
        table = Table(title=f"exports: {len(jobs)} programs of {len(grid.points())} points")
        for col in ("workers", "wall s", "speedup", "how"):
            table.add_column(col, justify="right" if col != "how" else "left")
        base = runs["one worker"]["wall_s"]
        table.add_row("1", f"{base:.1f}", "1.00x", "measured")
        wall_n = runs[f"{n} workers"]["wall_s"]
        table.add_row(str(n), f"{wall_n:.1f}", f"{base / wall_n:.2f}x", "measured")
        for m, w in projected.items():
            table.add_row(str(m), f"{w:.1f}", f"{base / w:.2f}x",
                          "projected (a core per worker)")
        console.print(table)

        if not args.no_phones:
            result["phones"] = profile_phones(ray, tmp, caches[f"{n} workers"], grid,
                                              Workspace, run_profile, profile_fleet, console)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


def profile_phones(ray, tmp: Path, cache: Path, grid, Workspace, run_profile, profile_fleet,
                   console: Console) -> dict:
    """Two loopback phones: one after the other (no fleet), then at once (the fleet)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from adbd import LoopbackAdbd, PhoneSandbox, WarmRunner

    from merino_mobile.device.adb_transport import ensure_adb_key

    key = ensure_adb_key(tmp / "android" / "adbkey")
    warm = WarmRunner()
    warm.wait_ready()
    out: dict = {}
    try:
        # the second phone reports another model, so the two have their own fingerprints
        props = {**PhoneSandbox(tmp / "probe").props, "ro.product.model": "Pixel 7 (second)"}
        sandbox_b = PhoneSandbox(tmp / "phone-b", props=props)
        with LoopbackAdbd(tmp / "phone-a", warm_runner=warm) as a, \
                LoopbackAdbd(tmp / "phone-b", warm_runner=warm, sandbox=sandbox_b) as b:
            for label in ("one after the other", "at once"):
                load = os.getloadavg()[0]
                ws = Workspace.resolve(tmp / label.replace(" ", "-"))
                ws.devices.mkdir(parents=True)
                for name, phone in zip(PHONES, (a, b), strict=True):
                    phone_profile(ws.devices, name, phone.address, key)
                shutil.copytree(cache, ws.state / "cache")
                t0 = time.perf_counter()
                if label == "at once":
                    r = profile_fleet(ws, list(PHONES), grid=grid)
                    if r.errors:
                        raise SystemExit(f"fleet profile failed: {r.errors}")
                    measured = sum(rep.measured for rep in r.reports.values())
                else:
                    measured = sum(run_profile(ws, name, grid=grid, workers=1).measured
                                   for name in PHONES)
                out[label] = {"wall_s": time.perf_counter() - t0, "measured": measured,
                              "load_avg_before": load}
                console.print(f"{label}: {measured} points in {out[label]['wall_s']:.1f} s")
    finally:
        warm.stop()
    table = Table(title="two simulated phones, programs cached")
    for col in ("profiled", "points", "wall s", "speedup"):
        table.add_column(col, justify="left" if col == "profiled" else "right")
    base = out["one after the other"]["wall_s"]
    for label, row in out.items():
        table.add_row(label, str(row["measured"]), f"{row['wall_s']:.1f}",
                      f"{base / row['wall_s']:.2f}x")
    console.print(table)
    return out


if __name__ == "__main__":
    main()
