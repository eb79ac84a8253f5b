"""Profiling: micro-benchmarks of the decoder's building blocks, measured on a device.

    grid (grid.py, from the search space) -> micro-models (micro.py) -> batched programs,
        content-hash cached (programs.py) -> device.benchmark -> store (store.py, one committed
        row per point) -> table (table.py, JSON, interpolated)

Each table term of `predict.py` is a micro-model built from the very modules the decoder uses,
exported by the real exporter for the runtime and quantization, and timed by the device's
runtime:

- layer: one DecoderLayer with its KV cache (at decode, several distinct ones timed in turn, see
  micro.py); decode is one token attending a cache of `context` slots, prefill is `context`
  tokens at once (the cache is as long as the prompt);
- projection: a bias-free Linear between widths; embedding: token plus learned-position lookup;
- head: the final LayerNorm and the vocabulary projection of the last position;
- fixed: positions and attention mask, what the whole model computes once per call;
- null: a call that does (almost) nothing, subtracted as per-call overhead (see table.py);
- anchors (anchors.py, `profile --anchors N`): a few whole models of the space, exported beside
  the micro-benchmarks and timed interleaved with them, the table's first calibration data.

Measurement discipline: every missing program is exported first, side by side, then points are
timed with nothing else running; the device applies warm-up and the repeat-until-stable rule;
threads and pinning come from the device profile and are stored with each point; each finished
point is committed at once, so a killed run resumes where it stopped; the sentinel (sentinel.py)
catches a device that changed speed and has the points since its last good reading measured again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from merino_mobile.device.base import Device, Fingerprint, MethodResult, MethodSpec
from merino_mobile.errors import UserError
from merino_mobile.formats import check_runtime_quant, for_runtime
from merino_mobile.latency.anchors import (
    Anchor,
    anchors_for,
    bench_anchor,
    export_anchor,
    stored_readings,
)
from merino_mobile.latency.anchors import summary as anchor_summary
from merino_mobile.latency.grid import Grid, make_grid
from merino_mobile.latency.micro import hot_points, in_program
from merino_mobile.latency.programs import (
    batches,
    export_batch,
    export_jobs,
    method_name,
    program_hash,
)
from merino_mobile.latency.sentinel import Sentinel
from merino_mobile.latency.store import Point, ProfileLock, Store
from merino_mobile.parallel import Job, run_jobs
from merino_mobile.space import Space, load_space
from merino_mobile.target import Target, resolve_target
from merino_mobile.workspace import Workspace

SCHEMA_VERSION = 1
# Exports run in worker processes side by side (`merino_mobile.parallel`) when their summed
# cost (programs.py) reaches this (about 10 layers): a spawned worker spends seconds importing
# torch.
PARALLEL_MIN_COST = 60.0

Progress = Callable[[str, int, int], None]  # (message, done, total)
EventHook = Callable[[str, str, int], None]  # (kind, method, pid)


@dataclass
class ProfileReport:
    """What one `profile` run did and where its table is."""

    device: str
    runtime: str
    quant: str
    grid: dict[str, Any]
    fingerprint: dict[str, Any]
    points: int
    skipped: int
    measured: int
    failed: list[str] = field(default_factory=list)
    sentinel: list[dict[str, Any]] = field(default_factory=list)
    remeasured: int = 0
    lut: str | None = None
    wall_s: float = 0.0
    export_s: float = 0.0
    passes: int = 1  # readings of each point: `points`, `skipped`, `measured` count readings
    anchors: list[dict[str, Any]] = field(default_factory=list)  # readings taken now
    anchors_stored: int = 0  # anchor readings a previous run had stored
    calibration: dict[str, Any] | None = None  # the refit at the end (None: no measurements)

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}


def run_profile(ws: Workspace, device: str | Target, runtime: str = "executorch",
                quant: str = "fp32",
                grid: Grid | None = None, *, progress: Progress | None = None,
                on_event: EventHook | None = None, max_redo: int = 2,
                workers: int | None = None, extra_jobs: Sequence[Job] = (),
                passes: int | None = None, anchors: int = 0,
                space: Space | str | None = None) -> ProfileReport:
    """Measure every missing point of `grid` on `device`, store each at once, write the table.

    `passes` (default the device profile's `[measure] passes`) reads every point that many
    times, pass after pass; the table takes the median of a point's readings (the slow ones'
    where they ran at two speeds, `table.reading_of`).

    `anchors` whole models of `space` (a `Space` or its file; default search/default.toml, the
    grid's default) are exported with the programs and benched once per pass, interleaved with
    the points (anchors.py); after the table is written, its calibration is refitted on every
    stored measurement of its fingerprint, runtime and quantization, when there is any.

    Every missing program is exported first, `workers` processes side by side (default: the
    usable cores), together with `extra_jobs` (the demo's reference model); then the points are
    timed with nothing else running."""
    from merino_mobile.latency.table import Lut, lut_path

    check_runtime_quant(runtime, quant, profiled=True)
    target = resolve_target(ws, device, quant=quant, runtime=runtime)
    prof = target.profile
    grid = grid or make_grid(ws.find("search", "default", ".toml"), "quick")
    chosen: list[Anchor] = []
    if anchors:
        if not isinstance(space, Space):
            space = load_space(space or ws.find("search", "default", ".toml"))
        chosen = anchors_for(space, anchors, grid.contexts[-1], ws.state / "cache",
                             for_runtime(runtime).name, quant)
    t0 = time.perf_counter()
    with ProfileLock(ws.state, prof.name):
        dev = target.open()
        try:
            fp = dev.fingerprint(runtime, quant)
            store = Store.open(ws.state)
            try:
                store.save_fingerprint(fp)
                run = ProfileRun(ws, dev, store, fp, grid, progress, on_event,
                                 passes or prof.measure.passes, anchors=chosen, target=target)
                report = run.run(max_redo, workers, extra_jobs)
                lut = Lut.from_rows(store.rows(fp.key, runtime, quant), fp, runtime, quant,
                                    prof.cache_bytes())
                measured = store.measurements(fingerprint=fp.key, runtime=runtime, quant=quant)
            finally:
                store.close()
            report.lut = str(lut.save(lut_path(ws.devices, prof.name, runtime, quant)))
        finally:
            dev.cleanup()
    target.forget_table()  # read the table just written, not one read before the profile
    if measured:
        report.calibration = refit(target)
    report.wall_s = time.perf_counter() - t0
    return report


def refit(target: Target) -> dict[str, Any]:
    """Refit the calibration of the target's (new) table; what the profile report shows of it."""
    from merino_mobile.latency.calibration import calibrate

    cal, path = calibrate(target)
    return {"file": str(path), "applied": cal.applied, "reason": cal.reason,
            "models": cal.models, "measurements": len(cal.measurement_ids),
            "factors": cal.factors, "loo_mape_pct": cal.loo_mape_pct}


class ProfileRun:
    """One profile of one device, runtime and quantization: the points still to read, in
    passes, each committed to the store the moment the device reports it."""

    def __init__(self, ws: Workspace, dev: Device, store: Store, fp: Fingerprint, grid: Grid,
                 progress: Progress | None, on_event: EventHook | None, passes: int, *,
                 anchors: Sequence[Anchor] = (), target: Target | None = None) -> None:
        if anchors and target is None:
            raise ValueError("anchors are benched through a Target: pass target")
        self.dev, self.store, self.fp, self.grid = dev, store, fp, grid
        self.target = target
        self.prof = dev.profile
        self.runtime, self.quant = fp.runtime, fp.quant
        self.key = (fp.key, self.runtime, self.quant)
        self.progress, self.on_event = progress, on_event
        self.passes = max(1, passes)
        self.cache = ws.state / "cache"
        self.replicated = bool(dev.replicates)
        base = grid.points()
        self.wanted = [replace(p, reading=k) for k in range(self.passes) for p in base]
        self.wanted += hot_points(base, self.quant, self.replicated)
        self.done = store.measured(*self.key)
        self.report = ProfileReport(
            self.prof.name, self.runtime, self.quant, grid.to_json(), fp.to_json(),
            points=len(self.wanted), skipped=sum(p.key in self.done for p in self.wanted),
            measured=0, passes=self.passes)
        self.batches = batches(base, grid, self.quant, self.replicated)
        self.total = len(self.wanted) - self.report.skipped
        self.format = for_runtime(self.runtime).name
        # anchor readings still to take: reading k of an anchor is taken in pass k
        stored = store.measurements(fingerprint=fp.key, runtime=self.runtime, quant=self.quant)
        have = {a: stored_readings(stored, a) for a in anchors}
        self.anchors = [(a, k) for k in range(self.passes) for a in anchors if have[a] <= k]
        self.report.anchors_stored = sum(min(n, self.passes) for n in have.values())
        self.total += len(self.anchors)
        self.count = 0
        self.failed: dict[str, str] = {}
        sentinel = grid.sentinel()
        # the sentinel is one of the grid's points: timed from that point's program
        self.sentinel_batch = next((b for b in self.batches if sentinel in b), (sentinel,))
        self.sentinel = Sentinel(store, self.key, self.prof.sentinel.threshold,
                                 self._measure_sentinel)

    def _say(self, message: str) -> None:
        if self.progress:
            self.progress(message, self.count, self.total)

    def unread(self, batch: Sequence[Point], k: int, among: set[str] | None = None
               ) -> list[Point]:
        """The points of a batch whose k-th reading is not stored (or, given `among`, whose
        k-th reading's key is among those); the first pass also reads the hot twins."""
        keys = [(p, replace(p, reading=k).key) for p in batch]
        if k == 0:
            keys += [(h, h.key) for h in hot_points(batch, self.quant, self.replicated)]
        if among is None:
            return [p for p, key in keys if key not in self.done]
        return [p for p, key in keys if key in among]

    def run(self, max_redo: int, workers: int | None, extra_jobs: Sequence[Job]
            ) -> ProfileReport:
        """Export what is missing, then read every point pass after pass: the readings of one
        point are minutes apart, so the table's median is not one moment of a shared machine's
        load."""
        queue: deque[tuple[Sequence[Point] | Anchor, int]] = deque(self.schedule())
        self._export(self.export_batches(), workers, [*extra_jobs, *self.anchor_jobs()])
        if queue:
            self.sentinel.check()
        since = redo = 0
        while queue:
            item, k = queue.popleft()
            if isinstance(item, Anchor):
                self.bench_anchor(item, k)
                continue
            batch = item
            todo = self.unread(batch, k)
            if not todo:
                continue
            if self.prof.cooldown.pause_s:
                time.sleep(self.prof.cooldown.pause_s)
            self.bench(batch, todo, k)
            since += len(todo)
            if since < self.prof.sentinel.every and queue:
                continue
            since = 0
            if not self.sentinel.check() and redo < max_redo:
                redo += 1
                keys = self._forget_since_good()
                queue.extend((b, k) for k in range(self.passes) for b in self.batches
                             if self.unread(b, k, keys))
                # the next sentinel reading decides whether the machine has settled
        self.report.failed = sorted(self.failed.values())
        self.report.sentinel = self.sentinel.readings
        return self.report

    def schedule(self) -> list[tuple[Sequence[Point] | Anchor, int]]:
        """What to time, pass after pass: each pass's batches with readings to take, and that
        pass's anchors spread evenly among them (a change of pace touches both alike)."""
        out: list[tuple[Sequence[Point] | Anchor, int]] = []
        for k in range(self.passes):
            bs = [b for b in self.batches if self.unread(b, k)]
            an = [a for a, ka in self.anchors if ka == k]
            slots = [round((j + 1) * len(bs) / (len(an) + 1)) for j in range(len(an))]
            for i in range(len(bs) + 1):
                out += [(a, k) for a, s in zip(an, slots, strict=True) if s == i]
                if i < len(bs):
                    out.append((bs[i], k))
        return out

    def anchor_jobs(self) -> list[Job]:
        """Export jobs of the anchors still to time whose export is not there yet."""
        from merino_mobile.export import reusable_export

        todo = {a.out_dir: a for a, _ in self.anchors}.values()
        return [Job(f"anchor {a.card.name} (whole model)", export_anchor,
                    (a.card, self.format, self.quant, a.out_dir, a.context),
                    cost=a.export_cost())
                for a in todo
                if reusable_export(a.out_dir, a.card, self.format, self.quant, a.context) is None]

    def bench_anchor(self, anchor: Anchor, k: int) -> None:
        """Time one anchor's reading k, stored as it finishes; a failure is a failed point."""
        assert self.target is not None
        if self.prof.cooldown.pause_s:
            time.sleep(self.prof.cooldown.pause_s)
        self._say(f"benching anchor {anchor.card.name}")
        key = f"{anchor.card.name} (whole model, reading {k})"
        try:
            rep = bench_anchor(self.target, self.dev, anchor, self.format, self.quant)
        except UserError as e:
            self.failed[key] = f"{key}: {e}"
        else:
            self.report.anchors.append(anchor_summary(anchor, k, rep))
            key += f": {rep.decode_ms_per_token.median:.3g} ms/token"
        self.count += 1
        self._say(key)

    def export_batches(self) -> list[Sequence[Point]]:
        """The batches whose programs this run times: each with a reading still to take, and
        the sentinel's when anything is timed (a fleet exports them across its cluster before
        its devices' runs start, `merino_mobile.fleet`)."""
        unread = [b for b in self.batches if any(self.unread(b, k) for k in range(self.passes))]
        return unread + [b for b in self.batches if unread and b is self.sentinel_batch]

    def _export(self, wanted: list[Sequence[Point]], workers: int | None,
                extra_jobs: Sequence[Job]) -> None:
        """Every missing program of `wanted` and `extra_jobs`, side by side. The progress of
        this phase counts exports (its total differs from the points')."""
        jobs = [*export_jobs(wanted, self.grid, self.runtime, self.quant, self.cache,
                             self.replicated), *extra_jobs]
        if not jobs:
            return
        te = time.perf_counter()
        if workers is None and sum(j.cost for j in jobs) < PARALLEL_MIN_COST:
            workers = 1  # a few small programs: starting worker processes costs more
        run_jobs(jobs, workers, self.progress)
        self.report.export_s += time.perf_counter() - te

    def _forget_since_good(self) -> set[str]:
        """Drop the readings since the sentinel's last good one; their keys, to read again."""
        again = self.store.forget_since(*self.key, self.sentinel.last_good_seq)
        keys = {p.key for p in again}
        self.done -= keys
        self.report.measured -= len(keys & {p.key for p in self.wanted})
        self.report.remeasured += len(keys)
        self.total += len(keys)
        return keys

    def _measure_sentinel(self) -> float | None:
        results = self.bench(self.sentinel_batch, (self.grid.sentinel(),), store_points=False)
        return results[0][1].median if results and results[0][1].ok else None

    def bench(self, batch: Sequence[Point], only: Sequence[Point], reading: int = 0,
              store_points: bool = True) -> list[tuple[Point, MethodResult]]:
        """Export (or reuse) a batch's program and time `only` of its points (their `reading`);
        each finished point is committed the moment the device reports it."""
        te = time.perf_counter()
        self._say(f"exporting {len(batch)} micro-models")
        artifact, specs = export_batch(batch, self.grid, self.runtime, self.quant, self.cache,
                                       self.replicated)
        self.report.export_s += time.perf_counter() - te
        h = program_hash(batch, self.grid, self.runtime, self.quant, self.replicated)
        keys = {p.key for p in only}
        handle = self.dev.prepare(artifact)
        out = []
        # the usual (cold) points, then the hot twins: the same methods with one instance each
        for hot in (False, True):
            twins = {method_name(i): replace(p, hot=hot) for i, p in enumerate(batch)}
            by_name = {name: p for name, p in twins.items() if p.key in keys}
            chosen = tuple(replace(s, instances=1) if hot else s
                           for s in specs if s.name in by_name)
            if chosen:
                out += self._bench_group(handle, chosen, by_name, reading, h, store_points)
        return out

    def _bench_group(self, handle: Any, chosen: tuple[MethodSpec, ...],
                     by_name: dict[str, Point], reading: int, h: str, store_points: bool
                     ) -> list[tuple[Point, MethodResult]]:
        """Time one request's methods; `by_name`: the point each method stands for."""
        stored: set[str] = set()

        def hook(kind: str, method: str, pid: int, result: Any = None) -> None:
            if self.on_event:
                self.on_event(kind, method, pid)
            if store_points and result is not None and kind in ("done", "failed"):
                self._keep(by_name[result.name], result, reading, h)
                stored.add(result.name)

        self._say(f"measuring {len(chosen)} micro-models")
        res = self.dev.benchmark(handle, self.prof.measure.request(self.runtime, chosen),
                                 on_event=hook)
        if store_points:  # a backend that does not report results as they finish
            for r in res.results:
                if r.name not in stored:
                    self._keep(by_name[r.name], r, reading, h)
        return [(by_name[r.name], r) for r in res.results]

    def _keep(self, p: Point, r: MethodResult, reading: int, h: str) -> None:
        """Commit one finished reading to the store and count it."""
        p = replace(p, reading=reading)
        self.store.record(*self.key, p, r, self.prof.threads, tuple(self.prof.cpus), h,
                          in_program(p, self.quant, self.replicated))
        self.count += 1
        if r.ok:
            self.done.add(p.key)
            self.report.measured += 1
            self.failed.pop(p.key, None)
        else:
            self.failed[p.key] = f"{p.label()}: {r.error}"
        self._say(p.label())
