"""The latency lookup table of one (device, runtime, quantization), with interpolation off-grid.

A `Lut` is built from the profiling store (`Lut.from_rows`), saved as versioned JSON under
`devices/<name>/lut-<runtime>-<quant>.json` with the device fingerprint, and implements
`merino_mobile.latency.LatencyTable`, so the design solver uses it as its latency constraint.

Each term's micro-benchmark is timed as one runtime call, so every number contains the per-call
overhead once. The table stores terms without it: term = max(0, measured - null), where `null` is
a method that does nothing at the same phase and length; the `fixed` term is the measured cost of
a call that only builds the positions and the attention mask, like the whole model does once.
A point read in several passes of the profile (`Point.reading`) enters the table once, as the
median of its readings, or of its slow readings where they ran at two speeds (`reading_of`).

Interpolation (the choice, and why). Latencies grow like the FLOPs of a term, which are quadratic
in width: linear interpolation of milliseconds between widths 128 and 256 would overestimate a
192-wide layer by about 10%. So each term has a small physical model, a non-negative least-squares
fit of ms to [1, matmul FLOPs, attention FLOPs] (scipy.optimize.nnls), and what is interpolated is
the measured/model ratio, linearly on a regular grid over (log width, ffn ratio, log context)
(scipy.interpolate.RegularGridInterpolator). On a grid point the prediction is exactly the
measurement; between grid points the FLOPs model carries the shape and the ratio corrects it; off
the grid (wider, longer) the ratio is held at the nearest edge and the model extrapolates in FLOPs.
Grid cells whose point failed to measure take the nearest measured ratio.

The monotone envelope (`monotone`). Before the surfaces are built, a layer point that reads less
than a point of its context doing less work (narrower, or a smaller FFN ratio) takes that
point's reading, and so does a head narrower than one it undercuts. A shared machine's noise has
a sign: its pace can flip to about three times as fast for seconds (docs/measurements.md, "Two
speeds"), so a single point read in such a window reads far too low, and the solver, looking for
cheap cells, picks exactly those. The file keeps every point as measured; "exact on grid points"
holds for every point the envelope leaves alone, which is every point of a table whose readings
keep the order.

Layer kinds. Layers of another kind than version 1's (`predict.LayerKind`: a SwiGLU FFN, fewer
K/V heads, RMSNorm, no biases) are their own surfaces, one per kind, never interpolated with
another kind: a K/V head count is a discrete choice of the space, measured as such. Their FLOPs
model counts the kind's own matrices (the gate, the narrower K and V). A card or space that needs
a kind the table lacks is refused (`MissingLayerKind`) with the kinds it has and the profile
command that measures it; a kind with explicit K/V heads equal to the heads is looked up as
multi-head where the table has no such points, and the other way round. A table of version 1
layers has exactly the entries and JSON it always had.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from merino_mobile.card import GATED
from merino_mobile.device.base import BENCH_VERSION, Fingerprint, two_speeds
from merino_mobile.errors import UserError
from merino_mobile.files import atomic_write_text, utc_now
from merino_mobile.latency.predict import LayerKind, MissingLayerKind
from merino_mobile.latency.store import Point, Row

SCHEMA_VERSION = 1
KIND = "merino-mobile-lut"
PHASES = ("decode", "prefill")


def lut_path(devices_dir: Path, device: str, runtime: str, quant: str) -> Path:
    """Where the table of a device, runtime and quantization lives: devices/<name>/lut-*.json."""
    return Path(devices_dir) / device / f"lut-{runtime}-{quant}.json"


# -- the per-term physical models ----------------------------------------------------------------

def _tokens(p: Point) -> int:
    return 1 if p.phase == "decode" else max(1, p.context)


def layer_features(p: Point) -> list[float]:
    hidden = p.width * p.ffn_ratio
    t = _tokens(p)
    kv = p.kv_heads * (p.width // p.heads) if p.kv_heads and p.heads else p.width
    ups = 2 if p.ffn in GATED else 1  # a gated FFN's gate beside up
    matmul = 2 * p.width**2 + 2 * p.width * kv + (ups + 1) * p.width * hidden  # q, o; k, v; FFN
    # attention reads `context` slots at decode (the positions a step attends), the prompt at
    # prefill
    return [1.0, 2 * matmul * t, 4 * p.width * p.context * t]


def projection_features(p: Point) -> list[float]:
    return [1.0, 2 * p.width * p.width_out * _tokens(p)]


def embedding_features(p: Point) -> list[float]:
    return [1.0, p.width * _tokens(p)]


def head_features(p: Point) -> list[float]:
    return [1.0, 2 * p.width * p.vocab]


def fixed_features(p: Point) -> list[float]:
    return [1.0, p.context * _tokens(p)]


# term -> (features, the point fields that are grid axes, which of them are log-scaled)
TERM_MODELS: dict[str, tuple[Callable[[Point], list[float]], tuple[str, ...], tuple[bool, ...]]] = {
    "layer": (layer_features, ("width", "ffn_ratio", "context"), (True, False, True)),
    "projection": (projection_features, ("width", "width_out", "context"), (True, True, True)),
    "embedding": (embedding_features, ("width", "context"), (True, True)),
    "head": (head_features, ("width",), (True,)),
    "fixed": (fixed_features, ("context",), (True,)),
}


@dataclass
class Surface:
    """One term at one phase: measured points, the FLOPs model and the interpolated ratio."""

    term: str
    phase: str
    points: list[tuple[Point, float]]
    coef: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        from scipy.interpolate import RegularGridInterpolator
        from scipy.optimize import nnls

        feats, axes, logs = TERM_MODELS[self.term]
        x = np.array([feats(p) for p, _ in self.points], dtype=float)
        y = np.array([ms for _, ms in self.points], dtype=float)
        if not self.coef:
            # scale columns so nnls is well conditioned; FLOPs span 1..1e10
            scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
            sol, _ = nnls(x / scale, y)
            self.coef = [float(c) for c in sol / scale]
        self._exact = {p.key: ms for p, ms in self.points}
        # a grid axis with a single value carries no information: held fixed
        self._axes = [(a, lg) for a, lg in zip(axes, logs, strict=True)
                      if len({getattr(p, a) for p, _ in self.points}) > 1]
        if not self._axes:
            self._interp = None
            self._ratio0 = float(np.median([self._ratio(p, ms) for p, ms in self.points]))
            return
        grid = [sorted({self._coord(getattr(p, a), lg) for p, _ in self.points})
                for a, lg in self._axes]
        values = np.full([len(g) for g in grid], np.nan)
        for p, ms in self.points:
            idx = tuple(g.index(self._coord(getattr(p, a), lg))
                        for g, (a, lg) in zip(grid, self._axes, strict=True))
            values[idx] = self._ratio(p, ms)
        if np.isnan(values).any():
            values = _fill_nearest(values)
        self._grid = grid
        self._interp = RegularGridInterpolator(grid, values, method="linear")

    @staticmethod
    def _coord(v: float, log: bool) -> float:
        return math.log(v) if log else float(v)

    def model(self, p: Point) -> float:
        return max(float(np.dot(self.coef, TERM_MODELS[self.term][0](p))), 1e-9)

    def _ratio(self, p: Point, ms: float) -> float:
        return ms / self.model(p)

    def __call__(self, p: Point) -> float:
        if p.key in self._exact:
            return self._exact[p.key]
        if self._interp is None:
            return self._ratio0 * self.model(p)
        q = []
        for g, (a, lg) in zip(self._grid, self._axes, strict=True):
            q.append(min(max(self._coord(getattr(p, a), lg), g[0]), g[-1]))
        return float(self._interp([q])[0]) * self.model(p)


# the grid axes along which a term can only cost more, and the fields that tell its surfaces'
# points apart otherwise (compared only among points alike in those)
MONOTONE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "layer": (("width", "ffn_ratio"), ("context",)),
    "head": (("width",), ("vocab",)),
}


def monotone(term: str, points: list[tuple[Point, float]]) -> list[tuple[Point, float]]:
    """Each point's ms raised to the most any point that does no more work reads: a layer is
    never cheaper than a narrower one or one of a smaller FFN ratio at the same context, a head
    never cheaper than a narrower one. The reason is the noise's sign: a shared machine's pace
    can flip to about three times as fast for seconds at a time (docs/measurements.md, "Two
    speeds"), so a point read in such a window reads far too low, never far too high, and the
    solver, which looks for what is cheap, would pick exactly those points. A point that reads
    less than one doing strictly less work was read in such a window; the envelope takes its
    neighbour's reading instead. Other terms are returned as measured."""
    if term not in MONOTONE:
        return points
    axes, same = MONOTONE[term]
    out = []
    for p, ms in points:
        floor = max((m for q, m in points
                     if all(getattr(q, f) == getattr(p, f) for f in same)
                     and all(getattr(q, a) <= getattr(p, a) for a in axes)), default=ms)
        out.append((p, max(ms, floor)))
    return out


def _fill_nearest(values: np.ndarray) -> np.ndarray:
    """Fill NaN cells with the nearest measured cell (grid-index distance)."""
    known = np.argwhere(~np.isnan(values))
    out = values.copy()
    for idx in np.argwhere(np.isnan(values)):
        nearest = known[np.abs(known - idx).sum(axis=1).argmin()]
        out[tuple(idx)] = values[tuple(nearest)]
    return out


# -- the table -----------------------------------------------------------------------------------

def reading_of(values: Sequence[float]) -> float:
    """A point's term from its readings, one per pass of the profile: their median, or, where
    the passes ran at two speeds (`two_speeds`: the slowest reading 1.8 times the fastest or
    more), the slow readings' median. A shared machine runs a whole window at about three times
    its usual pace now and then (docs/measurements.md, "Two speeds"); a median of two readings,
    one in such a window, is neither speed, and `design --verify` judges a budget by the slow
    one."""
    return float(two_speeds(list(values))["slow_ms"])


@dataclass
class Lut:
    """Measured per-term latencies (ms) of one device/runtime/quantization; a LatencyTable."""

    device: str
    runtime: str
    quant: str
    fingerprint: Fingerprint
    entries: dict[str, dict[str, list[tuple[Point, float]]]]  # term -> phase -> [(point, ms)]
    created: str = ""
    failed: list[str] = field(default_factory=list)
    source: str = "<lut>"
    # the device's last-level cache (0: unknown); with the hot twins, whole models that fit in
    # it are predicted hot (`merino_mobile.latency.predict_latency`)
    cache_bytes: float = 0.0

    def __post_init__(self) -> None:
        # (term, phase, layer kind) -> surface; the kind is LayerKind() but for layers of
        # another kind, each its own surface (see the module docstring)
        self._surfaces: dict[tuple[str, str, LayerKind], Surface] = {}
        self._hot: dict[tuple[str, str, LayerKind], Surface] = {}  # hot twins (`Point.hot`)
        for term, phases in self.entries.items():
            for phase, pts in phases.items():
                by_kind: dict[LayerKind, list[tuple[Point, float]]] = {}
                for p, ms in pts:
                    by_kind.setdefault(_kind(p), []).append((p, ms))
                for kind, kpts in by_kind.items():
                    cold = [(p, ms) for p, ms in kpts if not p.hot]
                    hot = [(p, ms) for p, ms in kpts if p.hot]
                    if cold:
                        self._surfaces[term, phase, kind] = Surface(term, phase,
                                                                    monotone(term, cold))
                    if hot:
                        self._hot[term, phase, kind] = Surface(term, phase,
                                                               monotone(term, hot))

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def from_rows(cls, rows: Iterable[Row], fingerprint: Fingerprint, runtime: str,
                  quant: str, cache_bytes: float = 0.0) -> Lut:
        """Terms from raw measurements: subtract the per-call overhead (`null`), divide by the
        instances one timed call ran (`Row.per_call`), drop failures; a point read in several
        passes (`Point.reading`) gets one value of its readings (`reading_of`).
        `cache_bytes`: the device's last-level cache (`DeviceProfile.cache_bytes`)."""
        rows = list(rows)
        nulls: dict[tuple[str, int], list[float]] = {}
        for r in rows:
            if r.ok and r.point.term == "null":
                nulls.setdefault((r.point.phase, _tokens(r.point)), []).append(r.median_ms)
        null = {k: float(np.median(v)) for k, v in nulls.items()}
        readings: dict[Point, list[float]] = {}
        for r in rows:
            p = r.point.shape
            if not r.ok or p.term == "null":
                continue
            ms = r.median_ms
            if p.term != "fixed":
                ms = max(0.0, ms - _nearest(null, p.phase, _tokens(p))) / r.per_call
            readings.setdefault(p, []).append(ms)
        entries: dict[str, dict[str, list[tuple[Point, float]]]] = {}
        for p, values in readings.items():
            entries.setdefault(p.term, {}).setdefault(p.phase, []).append(
                (p, reading_of(values)))
        read = {r.point.shape for r in rows if r.ok}
        failed = [f"{r.point.label()}: {r.error}" for r in rows
                  if not r.ok and r.point.shape not in read]
        missing = [t for t in ("fixed", "layer", "embedding", "head") if t not in entries]
        if missing:
            raise UserError(f"the measurements of {fingerprint.device} ({runtime}, {quant}) have "
                            f"no good points for {missing}; rerun `merino-mobile profile` "
                            f"(failures: {'; '.join(failed[:3]) or 'none'})")
        return cls(fingerprint.device, runtime, quant, fingerprint, entries,
                   utc_now(), failed,
                   cache_bytes=cache_bytes)

    # -- LatencyTable --------------------------------------------------------------------------

    def _term(self, term: str, phase: str, p: Point) -> float:
        p = self._measured_kind(term, p)
        kind = _kind(p)
        if p.hot:
            # a hot reading where one was taken; elsewhere the term as measured
            hot = self._hot.get((term, phase, kind))
            if hot is not None:
                return hot(p)
            p = replace(p, hot=False)
        surface = self._surfaces.get((term, phase, kind))
        if surface is None and phase == "prefill":
            # no prefill measured for this term: a prefill of T tokens costs T decode steps
            dec = self._surfaces.get((term, "decode", kind))
            if dec is not None:
                return p.context * dec(Point(**{**p.__dict__, "phase": "decode"}))
        if surface is None:
            raise UserError(f"{self.source}: no {phase} measurements of the {term} term; "
                            f"rerun `merino-mobile profile --device {self.device}`")
        return surface(p)

    def layer_kinds(self) -> list[LayerKind]:
        """The layer kinds this table measured (version 1's first where it has them)."""
        kinds = {k for (term, _, k) in self._surfaces if term == "layer"}
        return sorted(kinds, key=lambda k: (not k.is_v1, k.describe()))

    def _measured_kind(self, term: str, p: Point) -> Point:
        """`p` as a point of a layer kind the table measured: itself, or with K/V heads equal
        to the heads written the other way (multi-head); else MissingLayerKind."""
        if term != "layer":
            return p
        kinds = {k for (t, _, k) in self._surfaces if t == "layer"}
        kind = _kind(p)
        if kind in kinds:
            return p
        if kind.kv_heads == p.heads and replace(kind, kv_heads=None) in kinds:
            return replace(p, kv_heads=0)
        if kind.kv_heads is None and replace(kind, kv_heads=p.heads) in kinds:
            return replace(p, kv_heads=p.heads)
        have = "; ".join(k.describe() for k in self.layer_kinds()) or "none"
        raise MissingLayerKind(
            f"{self.source} has no measurements of {kind.describe()} (it has: {have}); profile "
            f"a search space of that kind: {profile_command(self.device, self.runtime, self.quant)}"
            f" --space SPACE")

    def fixed(self, phase: str = "decode", context: int = 0) -> float:
        """Per-call overhead (positions, mask, the call itself)."""
        v1 = LayerKind()
        surface = (self._surfaces.get(("fixed", phase, v1))
                   or self._surfaces.get(("fixed", "decode", v1)))
        if surface is None:
            raise UserError(f"{self.source}: no fixed-cost measurement")
        if context:
            return surface(Point("fixed", surface.phase, context=context))
        # without a context the protocol's plain fixed(): the median over measured contexts
        return float(np.median([ms for _, ms in surface.points]))

    def layer(self, width: int, ffn_ratio: float, heads: int, context: int,
              phase: str = "decode", hot: bool = False, *,
              kind: LayerKind = LayerKind()) -> float:
        """One decoder layer of `kind` (default: a version 1 layer); MissingLayerKind when the
        table measured no layer of that kind."""
        return self._term("layer", phase, Point("layer", phase, width=width,
                                                ffn_ratio=float(ffn_ratio), heads=heads,
                                                context=context, hot=hot,
                                                **kind.point_fields()))

    def projection(self, width_in: int, width_out: int, phase: str = "decode",
                   context: int = 1, hot: bool = False) -> float:
        if width_in == width_out:
            return 0.0
        return self._term("projection", phase, Point("projection", phase, width=width_in,
                                                      width_out=width_out, context=context,
                                                      hot=hot))

    def embedding(self, width: int, vocab: int, phase: str = "decode", context: int = 1) -> float:
        return self._term("embedding", phase, Point("embedding", phase, width=width,
                                                    vocab=self._vocab("embedding"),
                                                    context=context))

    def head(self, width: int, vocab: int, phase: str = "decode", hot: bool = False) -> float:
        # one measured phase serves both: the head runs on the last position only
        return self._term("head", "decode", Point("head", "decode", width=width, vocab=vocab,
                                                  hot=hot))

    @property
    def has_hot(self) -> bool:
        """Whether the profile read hot twins (see `merino_mobile.latency.predict_latency`)."""
        return bool(self._hot)

    def _vocab(self, term: str) -> int:
        # the embedding lookup was measured at one table size; a gather's cost does not grow
        # with rows it does not read, so every vocabulary maps onto the measured one
        pts = self.entries.get(term, {}).get("decode") or []
        return pts[0][0].vocab if pts else 0

    # -- identity ------------------------------------------------------------------------------

    def check(self, fingerprint: Fingerprint, runtime: str, quant: str) -> None:
        """Refuse to predict for another device, runtime, quantization or run settings."""
        problems = []
        if runtime != self.runtime:
            problems.append(f"runtime: table {self.runtime!r}, asked {runtime!r}")
        if quant != self.quant:
            problems.append(f"quantization: table {self.quant!r}, asked {quant!r}")
        problems += [f"fingerprint {m}" for m in self.fingerprint.mismatch(fingerprint)]
        if problems:
            raise UserError(
                f"{self.source} was measured on {self.fingerprint.describe()} and cannot predict "
                f"for {fingerprint.describe()} ({'; '.join(problems)}); profile this device: "
                f"{profile_command(fingerprint.device, runtime, quant)}")

    # -- JSON ----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        terms = {}
        for term, phases in self.entries.items():
            terms[term] = {phase: [_entry(p, ms) for p, ms in pts] for phase, pts in phases.items()}
        return {
            "schema_version": SCHEMA_VERSION, "kind": KIND, "bench_version": BENCH_VERSION,
            "device": self.device,
            "runtime": self.runtime, "quant": self.quant,
            "fingerprint": self.fingerprint.to_json(), "created": self.created,
            "interpolation": "ratio to an nnls FLOPs model, linear on (log width, ffn ratio, "
                             "log context); exact on grid points, after the monotone envelope "
                             "of layers (width, ffn ratio) and heads (width)",
            "terms": terms, "failed": self.failed, "cache_bytes": self.cache_bytes,
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "<lut>") -> Lut:
        """Parse a table; anything malformed is a schema error that names the file."""
        def bad(why: str) -> UserError:
            return UserError(f"{source}: not a valid latency table ({why}); regenerate it with "
                             f"`merino-mobile profile` (it reuses stored measurements)")

        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise bad(f'expected a JSON object with "kind": "{KIND}"')
        if data.get("schema_version") != SCHEMA_VERSION:
            raise bad(f"schema_version {data.get('schema_version')!r}, this version reads "
                      f"{SCHEMA_VERSION}")
        version = data.get("bench_version", 1)
        if version != BENCH_VERSION:
            again = profile_command(str(data.get("device", "NAME")), str(data.get("runtime")),
                                    str(data.get("quant")))
            raise UserError(f"{source} was measured with micro-benchmarks of version {version}; "
                            f"this merino-mobile measures with version {BENCH_VERSION}. Profile "
                            f"the device again: {again}")
        try:
            fp = Fingerprint.from_json(data["fingerprint"])
            entries: dict[str, dict[str, list[tuple[Point, float]]]] = {}
            for term, phases in data["terms"].items():
                if term not in TERM_MODELS:
                    raise bad(f"unknown term {term!r}")
                for phase, pts in phases.items():
                    if phase not in PHASES:
                        raise bad(f"unknown phase {phase!r} in term {term!r}")
                    for e in pts:
                        ms = e["ms"]
                        if not isinstance(ms, int | float) or not math.isfinite(ms) or ms < 0:
                            raise bad(f"{term}/{phase} entry {e} has an invalid ms")
                        shape = {k: v for k, v in e.items() if k not in ("ms",)}
                        entries.setdefault(term, {}).setdefault(phase, []).append(
                            (Point(term=term, phase=phase, **shape), float(ms)))
            cache = data.get("cache_bytes", 0.0)
            if not isinstance(cache, int | float) or not math.isfinite(cache) or cache < 0:
                raise bad(f"cache_bytes {cache!r} is not a size in bytes")
            lut = cls(str(data["device"]), str(data["runtime"]), str(data["quant"]), fp, entries,
                      str(data.get("created", "")), list(data.get("failed", [])), source,
                      float(cache))
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise bad(f"{type(e).__name__}: {e}") from None
        for t in ("fixed", "layer", "embedding", "head"):
            if t not in entries:
                raise bad(f"it has no {t!r} term")
        return lut

    def save(self, path: Path) -> Path:
        """Write atomically (a full disk leaves the previous table intact)."""
        path = Path(path)
        text = json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n"
        try:
            atomic_write_text(path, text)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror}; the previous table (if any) "
                            f"is unchanged") from None
        self.source = str(path)
        return path


def _kind(p: Point) -> LayerKind:
    """The layer kind a point's surface is keyed by (LayerKind() for every other term)."""
    return LayerKind.of_point(p) if p.term == "layer" else LayerKind()


def _entry(p: Point, ms: float) -> dict[str, Any]:
    d = {k: v for k, v in p.__dict__.items() if v and k not in ("term", "phase")}
    return d | {"ms": ms}


def _nearest(null: dict[tuple[str, int], float], phase: str, tokens: int) -> float:
    same = [(abs(math.log(t) - math.log(tokens)), ms) for (ph, t), ms in null.items()
            if ph == phase]
    if not same:
        same = [(0.0, ms) for _, ms in null.items()]
    return min(same)[1] if same else 0.0


def profile_command(device: str, runtime: str, quant: str) -> str:
    return f"merino-mobile profile --device {device} --runtime {runtime} --quant {quant}"


def read_lut(path: Path) -> Lut:
    """Read a table file; a corrupt or hand-broken file is a schema error naming the path."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no latency table at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a valid latency table (not JSON: {e}); regenerate it with "
                        f"`merino-mobile profile`") from None
    return Lut.from_json(data, source=str(path))


def load_lut(workspace: Any, device: str, runtime: str = "executorch",
             quant: str = "fp32", *, verify: bool = True, profile: Any = None) -> Lut:
    """The table of `device` (a name under devices/) for a runtime and quantization.

    `workspace` is a `Workspace` (or a folder). Looks in the workspace's devices/<device>/, then
    the shipped ones; a missing table names the exact `merino-mobile profile` command to run.
    With `verify`, a table of this host (transport "local") is checked against the machine it is
    used on, so a table copied from another computer is refused, not silently applied; `profile`
    is the device's profile when the caller has it (else it is read from the workspace).
    """
    from merino_mobile.workspace import BUILTIN, Workspace

    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    candidates: Sequence[Path] = (lut_path(ws.devices, device, runtime, quant),
                                  lut_path(BUILTIN / "devices", device, runtime, quant))
    for path in candidates:
        if path.is_file():
            lut = read_lut(path)
            if verify:
                _verify_local(ws, device, lut, profile)
            return lut
    raise UserError(f"no latency table for device {device!r} ({runtime}, {quant}) at "
                    f"{candidates[0]}; measure it first: "
                    f"{profile_command(device, runtime, quant)}")


def _verify_local(ws: Any, device: str, lut: Lut, profile: Any = None) -> None:
    from merino_mobile.device.host import HostDevice
    from merino_mobile.device.profiles import load_profile

    if profile is None:
        try:
            profile = load_profile(ws, device)
        except UserError:
            return  # a table without a profile: nothing to compare with
    if profile.transport == "local":
        lut.check(HostDevice(profile).fingerprint(lut.runtime, lut.quant), lut.runtime, lut.quant)
