"""Programs: micro-models batched into multi-method programs, exported once per content.

Many micro-models go into one program (at most MAX_METHODS methods and MAX_PROGRAM_BYTES of
weights: a program is exported and loaded as a whole). A program is exported once per content
(grid points, quantization, exporter and runtime versions) into the workspace's
`.merino-mobile/cache/` and reused by later runs and by other devices with the same runtime.
Exports of missing programs run as jobs side by side (`merino_mobile.parallel`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from merino_mobile.device.base import BENCH_VERSION, MethodSpec
from merino_mobile.formats import for_runtime
from merino_mobile.latency.grid import Grid
from merino_mobile.latency.micro import copies, in_program, input_specs, micro_model, weight_bytes
from merino_mobile.latency.store import Point
from merino_mobile.parallel import Job

MAX_METHODS = 24
MAX_PROGRAM_BYTES = 160e6


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


def program_hash(batch: Sequence[Point], grid: Grid, runtime: str, quant: str,
                 replicated: bool = False) -> str:
    blob = json.dumps({"bench": BENCH_VERSION, "runtime": runtime, "quant": quant,
                       "versions": for_runtime(runtime).toolchain(),
                       "max_context": grid.max_context,
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


