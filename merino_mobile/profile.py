"""Profiling: micro-benchmarks of the decoder's building blocks, measured on a device.

    grid (from the search space) -> micro-models -> batched programs (content-hash cached)
        -> device.benchmark -> store (one committed row per point) -> lut (JSON, interpolated)

Each LUT term of `merino_mobile.latency` is a micro-model built from the very modules the decoder
uses (`merino_mobile.model.DecoderLayer`, `KVCache`), exported by the real exporter for the runtime
and quantization (`lower_to_pte`, `to_onnx`), and timed by the device's runtime:

- layer: one DecoderLayer with its KV cache (at decode, several distinct ones timed in turn, see
  STREAM_BYTES); decode is one token attending a cache of `context` slots, prefill is
  `context` tokens at once (the cache is as long as the prompt);
- projection: a bias-free Linear between widths; embedding: token plus learned-position lookup;
- head: the final LayerNorm and the vocabulary projection of the last position;
- fixed: positions and attention mask, what the whole model computes once per call;
- null: a call that does (almost) nothing, subtracted as per-call overhead (see `lut.py`).

Many micro-models go into one multi-method program; a program is exported once per content (grid
points, quantization, exporter and runtime versions) into `.merino-mobile/cache/` and reused by
later runs and by other devices with the same runtime.

Measurement discipline: the device applies warm-up and the repeat-until-stable rule; threads and
pinning come from the device profile and are stored with each point; a sentinel point is
re-measured every `sentinel.every` points and, when it drifts more than `sentinel.threshold` from
its reference (and a second reading agrees), the points measured since the last good sentinel
are measured again and the new level becomes the reference.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from merino_mobile.device.base import (
    BENCH_VERSION,
    RUNTIMES,
    Device,
    InputSpec,
    MethodSpec,
)
from merino_mobile.errors import UserError
from merino_mobile.parallel import Job, run_jobs
from merino_mobile.store import Point, ProfileLock, Store
from merino_mobile.workspace import Workspace

SCHEMA_VERSION = 1
GRIDS = ("quick", "full")
QUICK_CONTEXTS = (128, 512)
FULL_CONTEXTS = (64, 128, 256, 512, 1024, 2048)
QUICK_PROMPTS = (128,)
FULL_PROMPTS = (32, 128, 512)
EMBED_VOCAB = 4096  # the lookup's cost does not depend on rows it never reads (see lut.py)
NULL_WIDTH = 64
MAX_METHODS = 24
MAX_PROGRAM_BYTES = 160e6
# A micro-benchmark calls one term many times, so weights that fit in the caches (32 MB of L3
# here) are timed hot, while a whole model, larger than any cache it runs on, streams its weights
# from DRAM every token. So a decode term with weights is timed as `copies` distinct instances
# called one after the other, which read up to STREAM_BYTES of weights between two calls of one
# instance; the table stores the time of one. Where the copies live depends on the device:
# - a device that `replicates` (the host) loads the exported single instance `copies` times and
#   calls them in turn: nothing extra to export, so up to MAX_INSTANCES. Measured on this host
#   by benchmarks/cold_weights.py (int8 decode layer of width 512, 1.6 MB): 0.60 ms a call with
#   31 instances, 0.67 ms a layer of a 32-layer program, 0.47 with 4 copies, 0.25 hot;
# - elsewhere (a phone's executor_runner runs one method once) the copies are built into the
#   micro-model and each is exported and lowered, so MAX_COPIES bounds that cost.
# A replicating device also times each such term hot (`hot_points`), one instance called again
# and again, for whole models small enough to stay in the cache (`latency.predict_latency`).
STREAM_BYTES = 48e6
MAX_COPIES = 4
MAX_INSTANCES = 32
# Exports run in worker processes side by side (`merino_mobile.parallel`) when their summed
# `_export_cost` reaches this (about 10 layers): a spawned worker spends seconds importing torch.
PARALLEL_MIN_COST = 60.0


# -- the grid ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """The shapes to measure, from a search space."""

    name: str
    widths: tuple[int, ...]
    ffn_ratios: tuple[float, ...]
    head_dim: int
    vocab: int
    max_context: int
    contexts: tuple[int, ...]
    prompts: tuple[int, ...]
    projection_widths: tuple[int, ...]
    embedding_widths: tuple[int, ...] = ()  # () = every width

    def points(self) -> list[Point]:
        """Every point, in a fixed order (batches, and so cached programs, depend on it)."""
        pts: list[Point] = [Point("null", "decode", context=1)]
        pts += [Point("null", "prefill", context=p) for p in self.prompts]
        pts += [Point("fixed", "decode", context=c) for c in self.contexts]
        pts += [Point("fixed", "prefill", context=p) for p in self.prompts]
        pts += [Point("head", "decode", width=w, vocab=self.vocab) for w in self.widths]
        for phase, lengths in (("decode", (1,)), ("prefill", self.prompts)):
            for t in lengths:
                pts += [Point("embedding", phase, width=w, vocab=EMBED_VOCAB, context=t)
                        for w in self.embedding_widths or self.widths]
                pts += [Point("projection", phase, width=a, width_out=b, context=t)
                        for a in self.projection_widths for b in self.projection_widths if a != b]
        for phase, lengths in (("decode", self.contexts), ("prefill", self.prompts)):
            for c in lengths:
                pts += [Point("layer", phase, width=w, ffn_ratio=r, heads=w // self.head_dim,
                              context=c) for w in self.widths for r in self.ffn_ratios]
        return pts

    def sentinel(self) -> Point:
        """The largest decode layer: re-measured to detect drift, long enough to time well."""
        w, r = self.widths[-1], self.ffn_ratios[-1]
        return Point("layer", "decode", width=w, ffn_ratio=r, heads=w // self.head_dim,
                     context=self.contexts[-1])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _spread(values: Sequence, n: int) -> tuple:
    """n values spread evenly over a sorted sequence, always including both ends."""
    if len(values) <= n:
        return tuple(values)
    idx = sorted({round(i * (len(values) - 1) / (n - 1)) for i in range(n)})
    return tuple(values[i] for i in idx)


def make_grid(space: Path, grid: str = "quick", contexts: Sequence[int] = (),
              prompts: Sequence[int] | None = None) -> Grid:
    """The grid of a search-space TOML (keys widths, ffn_ratios, head_dim, vocab, context).

    quick: every other width (both ends kept), 3 FFN ratios, 2 decode contexts, 1 prompt length,
    projections among 3 widths, embeddings at 4 (both are small terms that interpolate well);
    full: everything, 6 contexts, 3 prompt lengths.
    """
    from merino_mobile.device.profiles import tomllib

    if grid not in GRIDS:
        raise UserError(f"unknown grid {grid!r}; choose one of {', '.join(GRIDS)}")
    try:
        data = tomllib.loads(Path(space).read_text())
    except FileNotFoundError:
        raise UserError(f"no search space at {space}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{space}: not valid TOML ({e})") from None
    try:
        widths = sorted({int(w) for w in data["widths"]})
        ratios = sorted({float(r) for r in data["ffn_ratios"]})
        head_dim = int(data.get("head_dim", 64))
        vocab = int(data.get("vocab", 50272))
        max_context = int(data.get("context", 2048))
    except KeyError as e:
        raise UserError(f"{space}: missing key {e.args[0]!r} (a profile grid needs widths and "
                        f"ffn_ratios)") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{space}: {e}") from None
    if not widths or not ratios or any(w % head_dim for w in widths):
        raise UserError(f"{space}: widths must be non-empty multiples of head_dim {head_dim}, "
                        f"ffn_ratios non-empty")
    quick = grid == "quick"
    if quick:
        widths_q = list(widths[::2])
        if widths_q[-1] != widths[-1]:
            widths_q.append(widths[-1])
        widths = widths_q
        ratios = list(_spread(ratios, 3))
    default_c = QUICK_CONTEXTS if quick else FULL_CONTEXTS
    ctx = sorted({min(int(c), max_context) for c in (contexts or default_c)})
    default_p = QUICK_PROMPTS if quick else FULL_PROMPTS
    prm = sorted({min(int(p), max_context) for p in (default_p if prompts is None else prompts)
                  if int(p) > 0})
    if any(c < 1 for c in ctx):
        raise UserError(f"contexts must be positive, got {list(contexts)}")
    return Grid(grid, tuple(widths), tuple(ratios), head_dim, vocab, max_context, tuple(ctx),
                tuple(prm), _spread(widths, 3) if quick else tuple(widths),
                _spread(widths, 4) if quick else ())


# -- micro-models --------------------------------------------------------------------------------

def weight_bytes(p: Point, quant: str) -> float:
    """Bytes of the weight matrices one instance of a term reads per call (0: none)."""
    from merino_mobile.accounting import matrix_bytes

    if p.term == "layer":
        hidden = round(p.width * p.ffn_ratio)
        return 4 * matrix_bytes(p.width, p.width, quant) + 2 * matrix_bytes(hidden, p.width, quant)
    if p.term == "projection":
        return matrix_bytes(p.width_out, p.width, quant)
    if p.term == "head":
        return matrix_bytes(p.vocab, p.width, quant)
    return 0.0


def copies(p: Point, quant: str, replicated: bool = False) -> int:
    """Instances of a term timed in turn (see STREAM_BYTES); prefill is compute-bound.
    `replicated`: the device loads them (up to MAX_INSTANCES), else the micro-model holds them
    (up to MAX_COPIES)."""
    b = weight_bytes(p, quant)
    if p.phase != "decode" or b <= 0:
        return 1
    cap = MAX_INSTANCES if replicated else MAX_COPIES
    return max(1, min(cap, math.ceil(STREAM_BYTES / b)))


def input_specs(p: Point) -> tuple[InputSpec, ...]:
    """The inputs of a point's micro-benchmark method (see `micro_model`)."""
    t = 1 if p.phase == "decode" else p.context
    if p.term == "layer":
        # decode writes slot context-1 and sees all slots; prefill writes slots 0..T-1
        pos_fill: str | int = p.context - 1 if p.phase == "decode" else "arange"
        return (InputSpec((1, t, p.width)), InputSpec((t,), "int64", pos_fill),
                InputSpec((t, p.context), "bool", 1))
    if p.term == "projection":
        return (InputSpec((1, t, p.width)),)
    if p.term == "embedding":  # tokens, positions
        return (InputSpec((1, t), "int64", 7), InputSpec((t,), "int64", "arange"))
    if p.term == "fixed":  # tokens, start position
        return (InputSpec((1, t), "int64", 7), InputSpec((1,), "int64", 0))
    if p.term == "head":
        return (InputSpec((1, 1, p.width)),)
    if p.term == "null":
        return (InputSpec((1, t, NULL_WIDTH)),)
    raise ValueError(f"unknown term {p.term!r}")


def micro_model(p: Point, grid: Grid, quant: str = "fp32", n: int | None = None
                ) -> tuple[Any, tuple, tuple[InputSpec, ...]]:
    """(module, example args, input specs) of one point's micro-benchmark, with `n` instances
    of its term (default `copies(p, quant)`)."""
    import torch
    from torch import nn

    from merino_mobile.model import DecoderLayer, KVCache, LayerNorm

    n = copies(p, quant) if n is None else n
    specs = input_specs(p)
    if p.term == "layer":
        cache_len = p.context

        class LayerBench(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.layers = nn.ModuleList(
                    DecoderLayer(p.width, round(p.width * p.ffn_ratio), p.heads)
                    for _ in range(n))
                self.caches = nn.ModuleList(
                    KVCache(p.heads, cache_len, p.width // p.heads) for _ in range(n))

            def forward(self, x, pos, mask):
                for layer, cache in zip(self.layers, self.caches, strict=True):
                    x = layer(x, cache, pos, mask)
                return x

        return LayerBench(), _example(specs), specs
    if p.term == "projection":
        class ProjectionBench(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.proj = nn.ModuleList(nn.Linear(p.width, p.width_out, bias=False)
                                          for _ in range(n))

            def forward(self, x):
                # every instance reads the same input: the sum keeps all of them in the graph
                return sum(proj(x) for proj in self.proj)

        return ProjectionBench(), _example(specs), specs
    if p.term == "embedding":
        rows = grid.max_context

        class EmbedBench(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(p.vocab, p.width)
                self.pos_embed = nn.Embedding(rows, p.width)

            def forward(self, tokens, pos):
                return self.embed(tokens) + self.pos_embed(pos)

        return EmbedBench(), _example(specs), specs
    if p.term == "head":
        class HeadBench(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.norm = LayerNorm(p.width)
                self.heads = nn.ModuleList(nn.Linear(p.width, p.vocab, bias=False)
                                           for _ in range(n))

            def forward(self, x):
                y = self.norm(x[:, -1, :])
                return sum(head(y) for head in self.heads)

        return HeadBench(), _example(specs), specs
    if p.term == "fixed":
        cache_len = p.context

        class FixedBench(nn.Module):
            def forward(self, tokens, start):
                pos = start + torch.arange(tokens.shape[1], dtype=torch.long)
                mask = torch.arange(cache_len, dtype=torch.long)[None, :] <= pos[:, None]
                # tokens feed an output so no exporter drops the input as unused
                return pos, mask, tokens[:, -1:]

        return FixedBench(), _example(specs), specs
    if p.term == "null":
        class NullBench(nn.Module):
            def forward(self, x):
                return x + 1.0

        return NullBench(), _example(specs), specs
    raise ValueError(f"unknown term {p.term!r}")


def _example(specs: Sequence[InputSpec]) -> tuple:
    from merino_mobile.device.worker import make_inputs

    return tuple(make_inputs(tuple(specs), torch_tensors=True))


def in_program(p: Point, quant: str, replicated: bool) -> int:
    """Instances of a point's term built into its micro-model (1 when the device replicates)."""
    return 1 if replicated else copies(p, quant)


def _point_bytes(p: Point, grid: Grid, quant: str, replicated: bool) -> float:
    """Bytes a point adds to its program: its weights in the program's format, every copy."""
    if p.term == "embedding":  # lookups stay fp32
        return 4.0 * p.width * (p.vocab + grid.max_context)
    return weight_bytes(p, quant) * in_program(p, quant, replicated)


def batches(points: Sequence[Point], grid: Grid, quant: str = "fp32", replicated: bool = False
            ) -> list[tuple[Point, ...]]:
    """Consecutive points grouped into programs of at most MAX_METHODS methods and
    MAX_PROGRAM_BYTES of weights (a program is exported and loaded as a whole)."""
    out: list[tuple[Point, ...]] = []
    cur: list[Point] = []
    size = 0.0
    for p in points:
        b = _point_bytes(p, grid, quant, replicated)
        if cur and (len(cur) >= MAX_METHODS or size + b > MAX_PROGRAM_BYTES):
            out.append(tuple(cur))
            cur, size = [], 0.0
        cur.append(p)
        size += b
    if cur:
        out.append(tuple(cur))
    return out


def method_name(i: int) -> str:
    return f"m{i}"


def hot_points(points: Sequence[Point], quant: str, replicated: bool) -> list[Point]:
    """The hot twins of `points` (`Point.hot`): every decode term timed as several instances
    (`copies`), timed again as one instance called again and again, its weights staying in the
    caches. Only a device that `replicates` reads them: there the twin is the same method
    loaded once, nothing more to export. Read in the first pass only."""
    if not replicated:
        return []
    return [replace(p, hot=True) for p in points
            if not p.hot and copies(p, quant, replicated) > 1]


def _versions(runtime: str) -> dict[str, str]:
    from merino_mobile.export import package_versions

    return package_versions(("torch", "executorch") if runtime == "executorch"
                            else ("torch", "onnx", "onnxscript"))


def program_hash(batch: Sequence[Point], grid: Grid, runtime: str, quant: str,
                 replicated: bool = False) -> str:
    blob = json.dumps({"bench": BENCH_VERSION, "runtime": runtime, "quant": quant,
                       "versions": _versions(runtime), "max_context": grid.max_context,
                       "points": [p.key for p in batch],
                       "copies": [in_program(p, quant, replicated) for p in batch]},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def export_batch(batch: Sequence[Point], grid: Grid, runtime: str, quant: str,
                 cache_dir: Path, replicated: bool = False
                 ) -> tuple[Path, tuple[MethodSpec, ...]]:
    """The program of a batch (from the cache when its content was exported before); with
    `replicated`, each method holds one instance and its spec asks the device for `copies`."""
    h = program_hash(batch, grid, runtime, quant, replicated)
    specs = tuple(MethodSpec(method_name(i), input_specs(p),
                             copies(p, quant) if replicated else 1)
                  for i, p in enumerate(batch))
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = program_path(batch, grid, runtime, quant, cache_dir, replicated)
    if path.exists():  # exported before (or by an export worker): no module is built
        return path, specs
    built = [micro_model(p, grid, quant, in_program(p, quant, replicated)) for p in batch]
    if runtime == "executorch":
        if not path.is_file():
            from merino_mobile.export.executorch import lower_to_pte

            # a temporary name of this process: a killed export never leaves a cached
            # half-program, and two exports of one program never write one file
            tmp = cache_dir / f"{h}.partial-{os.getpid()}.pte"
            methods = {method_name(i): (m, args, None) for i, (m, args, _) in enumerate(built)}
            lower_to_pte(methods, quant, tmp)
            tmp.replace(path)
        return path, specs
    if not path.is_dir():
        from merino_mobile.export.onnx import to_onnx

        tmp = cache_dir / f"{h}.partial-{os.getpid()}.onnx.d"
        tmp.mkdir(exist_ok=True)
        for i, (m, args, _) in enumerate(built):
            to_onnx(m, args, quant, tmp / f"{method_name(i)}.onnx")
        if path.is_dir():  # another process finished it first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.replace(path)
    return path, specs


def program_path(batch: Sequence[Point], grid: Grid, runtime: str, quant: str, cache_dir: Path,
                 replicated: bool = False) -> Path:
    """Where a batch's program is cached (a .pte file, or a folder of .onnx files)."""
    h = program_hash(batch, grid, runtime, quant, replicated)
    return cache_dir / (f"{h}.pte" if runtime == "executorch" else f"{h}.onnx.d")


def _export_cost(batch: Sequence[Point]) -> float:
    """Relative lowering time of a program (a layer costs several small terms)."""
    return 2.0 + sum(4.0 if p.term == "layer" else 1.0 for p in batch)


def export_jobs(batches_: Sequence[Sequence[Point]], grid: Grid, runtime: str, quant: str,
                cache_dir: Path, replicated: bool = False) -> list[Job]:
    """Export jobs (`merino_mobile.parallel`) of the batches whose program is not cached yet."""
    out, seen = [], set()
    for b in batches_:
        path = program_path(b, grid, runtime, quant, cache_dir, replicated)
        if path.exists() or path in seen:
            continue
        seen.add(path)
        out.append(Job(f"{len(b)} micro-model{'s' * (len(b) > 1)}", export_batch,
                       (tuple(b), grid, runtime, quant, cache_dir, replicated),
                       _export_cost(b)))
    return out


# -- the run -------------------------------------------------------------------------------------

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

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}


Progress = Callable[[str, int, int], None]  # (message, done, total)


def run_profile(ws: Workspace, device: str, runtime: str = "executorch", quant: str = "fp32",
                grid: Grid | None = None, *, progress: Progress | None = None,
                on_event: Callable[[str, str, int], None] | None = None,
                max_redo: int = 2, workers: int | None = None,
                extra_jobs: Sequence[Job] = (), passes: int | None = None) -> ProfileReport:
    """Measure every missing point of `grid` on `device`, store each at once, write the LUT.

    `passes` (default the device profile's `[measure] passes`) reads every point that many
    times, pass after pass; the table takes the median of a point's readings.

    Every missing program is exported first, `workers` processes side by side (default: the
    usable cores), together with `extra_jobs` (the demo's reference model); then the points are
    timed with nothing else running."""
    from merino_mobile import device as devices
    from merino_mobile.device.profiles import load_profile
    from merino_mobile.lut import Lut, lut_path

    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if quant not in ("fp32", "int8", "int4"):
        raise UserError(f"unknown quantization {quant!r}; choose one of fp32, int8, int4")
    prof = load_profile(ws, device)
    grid = grid or make_grid(ws.find("search", "default", ".toml"), "quick")
    t0 = time.perf_counter()
    with ProfileLock(ws.state, prof.name):
        dev: Device = devices.open_device(prof)
        try:
            if runtime not in dev.runtimes():
                raise UserError(f"device {prof.name!r} cannot run {runtime} (it has "
                                f"{', '.join(dev.runtimes()) or 'no runtime'}); see "
                                f"{prof.path}")
            fp = dev.fingerprint(runtime, quant)
            store = Store.open(ws.state)
            try:
                store.save_fingerprint(fp)
                report = _measure(ws, dev, store, fp, runtime, quant, grid, progress, on_event,
                                  max_redo, workers, extra_jobs,
                                  passes or prof.measure.passes)
                lut = Lut.from_rows(store.rows(fp.key, runtime, quant), fp, runtime, quant,
                                    prof.cache_bytes())
            finally:
                store.close()
            report.lut = str(lut.save(lut_path(ws.devices, prof.name, runtime, quant)))
        finally:
            dev.cleanup()
    report.wall_s = time.perf_counter() - t0
    return report


def _measure(ws: Workspace, dev: Device, store: Store, fp: Any, runtime: str, quant: str,
             grid: Grid, progress: Progress | None, on_event: Any, max_redo: int,
             workers: int | None = None, extra_jobs: Sequence[Job] = (), passes: int = 1
             ) -> ProfileReport:
    prof = dev.profile
    cache = ws.state / "cache"
    passes = max(1, passes)
    base = grid.points()
    replicated = bool(dev.replicates)
    wanted = [replace(p, reading=k) for k in range(passes) for p in base]
    wanted += hot_points(base, quant, replicated)
    done = store.measured(fp.key, runtime, quant)
    report = ProfileReport(prof.name, runtime, quant, grid.to_json(), fp.to_json(),
                           points=len(wanted), skipped=sum(p.key in done for p in wanted),
                           measured=0, passes=passes)
    all_batches = batches(base, grid, quant, replicated)

    def unread(batch: Sequence[Point], k: int, among: set[str] | None = None) -> list[Point]:
        """The points of a batch whose k-th reading is not stored (or, given `among`, whose
        k-th reading's key is among those); the first pass also reads the hot twins."""
        keys = [(p, replace(p, reading=k).key) for p in batch]
        if k == 0:
            keys += [(h, h.key) for h in hot_points(batch, quant, replicated)]
        if among is None:
            return [p for p, key in keys if key not in done]
        return [p for p, key in keys if key in among]

    # pass after pass: each pass reads every point once, so the readings of one point are
    # minutes apart and the table's median is not one moment of a shared machine's load
    queue = deque((b, k) for k in range(passes) for b in all_batches if unread(b, k))
    total = len(wanted) - report.skipped
    count = 0
    # export first, side by side; the sentinel's program is needed only when something is timed
    to_export = list({id(b): b for b, _ in queue}.values())
    jobs = export_jobs(to_export + [b for b in all_batches if queue and grid.sentinel() in b],
                       grid, runtime, quant, cache, replicated)
    if jobs or extra_jobs:
        te = time.perf_counter()
        all_jobs = [*jobs, *extra_jobs]
        if workers is None and sum(j.cost for j in all_jobs) < PARALLEL_MIN_COST:
            workers = 1  # a few small programs: starting worker processes costs more
        # the progress of this phase counts exports (its total differs from the points')
        run_jobs(all_jobs, workers, progress)
        report.export_s += time.perf_counter() - te
    failed: dict[str, str] = {}
    dev_cpus = tuple(prof.cpus)

    def bench(batch: Sequence[Point], only: Sequence[Point], reading: int = 0,
              store_points: bool = True) -> list[tuple[Point, Any]]:
        """Export (or reuse) a batch's program and time `only` of its points (their `reading`);
        each finished point is committed the moment the device reports it."""
        nonlocal count
        te = time.perf_counter()
        if progress:
            progress(f"exporting {len(batch)} micro-models", count, total)
        artifact, specs = export_batch(batch, grid, runtime, quant, cache, replicated)
        report.export_s += time.perf_counter() - te
        h = program_hash(batch, grid, runtime, quant, replicated)
        keys = {p.key for p in only}
        handle = dev.prepare(artifact)
        out = []
        # the usual (cold) points, then the hot twins: the same methods with one instance each
        for hot in (False, True):
            twins = {method_name(i): replace(p, hot=hot) for i, p in enumerate(batch)}
            by_name = {name: p for name, p in twins.items() if p.key in keys}
            chosen = tuple(replace(s, instances=1) if hot else s
                           for s in specs if s.name in by_name)
            if chosen:
                out += _bench_group(handle, chosen, by_name, reading, h, store_points)
        return out

    def _bench_group(handle: Any, chosen: tuple[MethodSpec, ...], by_name: dict[str, Point],
                     reading: int, h: str, store_points: bool) -> list[tuple[Point, Any]]:
        """Time one request's methods; `by_name`: the point each method stands for."""
        stored: set[str] = set()
        req = prof.measure.request(runtime, chosen)

        def keep(p: Point, r: Any) -> None:
            nonlocal count
            p = replace(p, reading=reading)
            store.record(fp.key, runtime, quant, p, r, prof.threads, dev_cpus, h,
                         in_program(p, quant, replicated))
            stored.add(r.name)
            count += 1
            if r.ok:
                done.add(p.key)
                report.measured += 1
                failed.pop(p.key, None)
            else:
                failed[p.key] = f"{p.label()}: {r.error}"
            if progress:
                progress(p.label(), count, total)

        def hook(kind: str, method: str, pid: int, result: Any = None) -> None:
            if on_event:
                on_event(kind, method, pid)
            if store_points and result is not None and kind in ("done", "failed"):
                keep(by_name[result.name], result)

        if progress:
            progress(f"measuring {len(chosen)} micro-models", count, total)
        res = dev.benchmark(handle, req, on_event=hook)
        if store_points:  # a backend that does not report results as they finish
            for r in res.results:
                if r.name not in stored:
                    keep(by_name[r.name], r)
        return [(by_name[r.name], r) for r in res.results]

    # the sentinel's reference: the level this table's last sentinel reading established
    history = store.sentinels(fp.key, runtime, quant)
    reference = history[-1][0] if history else None
    last_good_seq = max((s for _, s, good in history if good), default=0)
    since = 0
    redo = 0
    sentinel = grid.sentinel()

    # the sentinel is one of the grid's points: timed from that point's program
    sentinel_batch = next((b for b in all_batches if sentinel in b), (sentinel,))

    def measure_sentinel() -> float | None:
        results = bench(sentinel_batch, (sentinel,), store_points=False)
        return results[0][1].median if results and results[0][1].ok else None

    def check_sentinel() -> bool:
        """Measure the sentinel; False when it drifted (confirmed by a second measurement)."""
        nonlocal reference, last_good_seq
        ms = measure_sentinel()
        if ms is None:
            return True  # a sentinel that cannot run says nothing about drift
        drift = 0.0 if reference is None else ms / reference - 1
        if abs(drift) > prof.sentinel.threshold:
            # one slow or fast reading is noise until a second one agrees
            again = measure_sentinel()
            if again is not None and abs(again / ms - 1) <= prof.sentinel.threshold:
                ms, drift = (ms + again) / 2, (ms + again) / 2 / reference - 1
            elif again is not None:
                ms, drift = again, again / reference - 1
        good = abs(drift) <= prof.sentinel.threshold
        store.record_sentinel(fp.key, runtime, quant, ms, good)
        report.sentinel.append({"median_ms": ms, "drift": drift, "good": good})
        if reference is None or not good:
            # the device now runs at a new level: later points compare with it (the points
            # since the last good sentinel are measured again by the caller)
            reference = ms
        if good:
            last_good_seq = max(s for _, s, _ in store.sentinels(fp.key, runtime, quant))
        return good

    if queue:
        check_sentinel()
    while queue:
        batch, k = queue.popleft()
        todo = unread(batch, k)
        if not todo:
            continue
        if prof.cooldown.pause_s:
            time.sleep(prof.cooldown.pause_s)
        bench(batch, todo, k)
        since += len(todo)
        if since >= prof.sentinel.every or not queue:
            since = 0
            if not check_sentinel() and redo < max_redo:
                redo += 1
                again = store.forget_since(fp.key, runtime, quant, last_good_seq)
                keys = {p.key for p in again}
                done -= keys
                report.measured -= len(keys & {p.key for p in wanted})
                report.remeasured += len(keys)
                total += len(keys)
                queue.extend((b, k) for k in range(passes) for b in all_batches
                             if unread(b, k, keys))
                # the next sentinel decides whether the machine has settled
    report.failed = sorted(failed.values())
    return report


def describe_grid(grid: Grid) -> str:
    """One line: how many points and which shapes."""
    return (f"{grid.name} grid: {len(grid.points())} points; widths {list(grid.widths)}, ffn "
            f"ratios {[f'{r:g}' for r in grid.ffn_ratios]}, decode contexts "
            f"{list(grid.contexts)}, prompts {list(grid.prompts)}")
