"""What a device can do, apart from how bytes reach it.

Two small protocols, in the spirit of adb-shell's device/transport split:

- `Transport` moves bytes and runs commands: a local process (`host`), ADB over TCP or USB
  (`adb`), an ssh session to a Mac. It knows nothing about models or runtimes.
- `Device` is what the profiler and `bench` talk to: it reads its `Fingerprint`, lists the runtimes
  it can run, `prepare`s an exported artifact (push it, verify it), `benchmark`s methods of it under
  the measurement discipline below, and `cleanup`s what it left on the device.

A backend is one module under `merino_mobile.device` exposing two functions:

    open_device(profile: DeviceProfile) -> Device
    probe(profile: DeviceProfile) -> Probe        # cheap "is it reachable now?", never raises

`merino_mobile.device.open_device` / `probe` dispatch on the profile's `transport` (the registry
`merino_mobile.device.BACKENDS`).

Measurement discipline (shared by every backend so numbers mean the same thing everywhere):
`warmup` untimed calls, then timed calls until at least `min_repeats` samples and `min_seconds` of
timing exist and the spread p90/p10 is at most `target_spread`, or `max_repeats` samples or
`max_seconds` of timing are reached (`should_stop`). `min_seconds` keeps a fast method from being
judged on a few milliseconds of a shared machine's load. A result keeps every sample;
`MethodResult.median/p10/p90` summarize them.
A method that crashes the runtime, raises, or exceeds `timeout_s` is a failed `MethodResult` with
the reason, never an exception: one bad micro-benchmark must not end a profiling run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from merino_mobile.device.profiles import DeviceProfile



# -- transport -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunResult:
    """Outcome of one command run through a transport. A negative returncode is -signal."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


class Transport(Protocol):
    """How bytes and commands reach a device."""

    def run(self, argv: Sequence[str], timeout: float | None = None,
            stdin: str | None = None) -> RunResult:
        """Run a command on the device; argv items are quoted by the transport, never joined."""
        ...

    def push(self, local: Path, remote: str) -> None:
        """Copy a local file to the device and verify it arrived intact."""
        ...

    def pull(self, remote: str, local: Path) -> None:
        """Copy a file from the device."""
        ...

    def close(self) -> None:
        ...


# -- fingerprint ---------------------------------------------------------------------------------

# The fields that decide whether a latency table applies: hardware, OS, runtime and how it runs.
# Quantization is not here: the store and the LUT file name key it separately.
KEY_FIELDS = ("model", "cpu", "cores", "os", "abi", "runtime", "runtime_version", "threads",
              "cpus")
# How the profiler measures (its micro-models). Bump when they change: it is part of every
# fingerprint key, so stored measurements and cached programs of another version are not reused,
# and of every table, which `merino_mobile.latency.table` refuses when it differs. 4: ExecuTorch
# programs attend through its LLM ops (`model.use_llm_ops`).
BENCH_VERSION = 4


@dataclass(frozen=True)
class Fingerprint:
    """Who measured a latency table: device, hardware, OS, runtime, how it ran, and when."""

    device: str
    model: str
    cpu: str
    cores: int
    os: str
    abi: str
    runtime: str
    runtime_version: str
    threads: int
    quant: str
    cpus: tuple[int, ...] = ()
    date: str = ""

    @property
    def key(self) -> str:
        """Stable hash of the fields that must match for a table to apply (not date/quant)."""
        d = asdict(self)
        blob = json.dumps({k: d[k] for k in KEY_FIELDS} | {"bench": BENCH_VERSION},
                          sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def describe(self) -> str:
        pin = f", pinned to cpus {','.join(map(str, self.cpus))}" if self.cpus else ""
        return (f"{self.device} ({self.model}; {self.cpu}, {self.cores} cores; {self.os}; "
                f"{self.runtime} {self.runtime_version}, {self.threads} threads{pin}, "
                f"{self.quant})")

    def mismatch(self, other: Fingerprint) -> list[str]:
        """The key fields in which `other` differs, as readable 'field: a != b' strings."""
        a, b = asdict(self), asdict(other)
        return [f"{k}: {a[k]!r} != {b[k]!r}" for k in KEY_FIELDS if a[k] != b[k]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"cpus": list(self.cpus), "key": self.key}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fingerprint:
        d = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        d["cpus"] = tuple(d.get("cpus") or ())
        return cls(**d)


# -- benchmark requests and results --------------------------------------------------------------

@dataclass(frozen=True)
class InputSpec:
    """One input tensor of a method: shape, dtype ("float32" | "int64") and fill.

    `fill` is "randn" (floats), "zeros", or an integer every element takes (token ids, positions).
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    fill: str | int = "randn"

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "fill": self.fill}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InputSpec:
        return cls(tuple(d["shape"]), d.get("dtype", "float32"), d.get("fill", "randn"))


@dataclass(frozen=True)
class MethodSpec:
    """A method of a prepared artifact to time; ONNX artifacts have one method, "forward"."""

    name: str
    inputs: tuple[InputSpec, ...]
    # Load the method this many times, each with its own copy of the weights, and call the copies
    # in turn (one sample is one call): a device with `replicates` keeps weights out of the caches
    # this way (see `merino_mobile.latency.micro.STREAM_BYTES`); others are only ever asked for 1.
    instances: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "inputs": [i.to_json() for i in self.inputs],
                "instances": self.instances}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MethodSpec:
        return cls(d["name"], tuple(InputSpec.from_json(i) for i in d["inputs"]),
                   int(d.get("instances", 1)))


@dataclass(frozen=True, kw_only=True)
class StopRule:
    """The measurement discipline's settings (see the module docstring): a device profile's
    `[measure]` table holds them, and every BenchRequest carries them."""

    warmup: int = 3
    min_repeats: int = 5
    max_repeats: int = 50
    target_spread: float = 1.15
    max_seconds: float = 2.0
    timeout_s: float = 120.0
    min_seconds: float = 0.0


@dataclass(frozen=True)
class BenchRequest(StopRule):
    """Which methods to time, and (its StopRule fields, by keyword) how long to time them."""

    runtime: str
    methods: tuple[MethodSpec, ...]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["methods"] = [m.to_json() for m in self.methods]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BenchRequest:
        d = dict(d)
        d["methods"] = tuple(MethodSpec.from_json(m) for m in d["methods"])
        return cls(**d)


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), numpy's default definition."""
    if not samples:
        return math.nan
    s = sorted(samples)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


TWO_SPEEDS = 1.8  # slowest over fastest window from which a bench ran at two speeds


def two_speeds(windows_ms: list[float], ratio: float = TWO_SPEEDS) -> dict[str, Any]:
    """Whether separate windows of one measurement (rounds, benches) ran at two speeds, and
    which: when the slowest window is `ratio` times the fastest or more, they are split at the
    geometric mean of the two (`cut_ms`); `slow_ms` and `fast_ms` are each side's median and
    `fast_share` the share of windows on the fast side. A shared machine's pace can flip to
    about three times as fast for seconds at a time (docs/measurements.md, "Two speeds"); a
    median over windows then says how often the fast windows came, not how fast the model is.
    One speed: `slow_ms` is the median, `fast_ms` and `cut_ms` None."""
    if not windows_ms:
        raise ValueError("no windows")
    lo, hi = min(windows_ms), max(windows_ms)
    med = percentile(windows_ms, 50)
    out: dict[str, Any] = {"speeds": 1, "slow_ms": med, "fast_ms": None, "fast_share": 0.0,
                           "cut_ms": None}
    if lo > 0 and hi >= ratio * lo:
        cut = math.sqrt(lo * hi)
        fast = [x for x in windows_ms if x < cut]
        out = {"speeds": 2, "slow_ms": percentile([x for x in windows_ms if x >= cut], 50),
               "fast_ms": percentile(fast, 50), "fast_share": len(fast) / len(windows_ms),
               "cut_ms": cut}
    return out


def should_stop(samples: Sequence[float], elapsed_s: float, request: BenchRequest) -> bool:
    """The shared stopping rule: enough samples and a small spread, or a cap reached."""
    n = len(samples)
    if n >= request.max_repeats or (elapsed_s >= request.max_seconds and n >= 1):
        return True
    if n < request.min_repeats or elapsed_s < request.min_seconds:
        return False
    p10 = percentile(samples, 10)
    return p10 > 0 and percentile(samples, 90) / p10 <= request.target_spread


@dataclass(frozen=True)
class MethodResult:
    """Timings (ms per call) of one method, or why there are none.

    Optional, when the backend can tell: `load_ms`, the time to make the method callable in a
    fresh runtime process (program load for the first method of a process, plus method load), and
    `peak_rss_bytes`, the runtime process's resident-set high-water mark after timing it.
    """

    name: str
    samples_ms: tuple[float, ...] = ()
    error: str | None = None
    load_ms: float | None = None
    peak_rss_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.samples_ms)

    @property
    def median(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p10(self) -> float:
        return percentile(self.samples_ms, 10)

    @property
    def p90(self) -> float:
        return percentile(self.samples_ms, 90)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "samples_ms": list(self.samples_ms), "error": self.error,
                "median_ms": self.median if self.ok else None, "load_ms": self.load_ms,
                "peak_rss_bytes": self.peak_rss_bytes}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MethodResult:
        return cls(d["name"], tuple(d.get("samples_ms") or ()), d.get("error"),
                   d.get("load_ms"), d.get("peak_rss_bytes"))


@dataclass(frozen=True)
class BenchResult:
    """All methods of one request, in request order, plus how they were run."""

    results: tuple[MethodResult, ...]
    threads: int
    cpus: tuple[int, ...] = ()
    wall_s: float = 0.0

    def __getitem__(self, name: str) -> MethodResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {"results": [r.to_json() for r in self.results], "threads": self.threads,
                "cpus": list(self.cpus), "wall_s": self.wall_s}


@dataclass(frozen=True)
class Handle:
    """An artifact made ready on a device: where it lives there, and what it is."""

    local: Path
    remote: str
    runtime: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Probe:
    """Whether a device can be used right now, and a one-line detail (why not, or what it is)."""

    reachable: bool | None  # None: cannot tell (backend missing)
    detail: str


# Called with ("start" | "done" | "failed", method name, worker pid) while a benchmark runs; the
# profiler drives its progress bar from it. A backend may pass the finished MethodResult as a
# fourth argument with "done"/"failed": the profiler then stores that point at once instead of
# when the whole request returns (host does; hooks must accept both forms).
EventHook = Callable[..., None]


# -- device --------------------------------------------------------------------------------------

class Device(Protocol):
    """A device the profiler can measure on."""

    name: str
    profile: DeviceProfile
    # True when benchmark() honours MethodSpec.instances > 1 (loads a method several times with
    # distinct weights); otherwise the profiler builds the copies into the program instead.
    replicates: bool

    def fingerprint(self, runtime: str, quant: str) -> Fingerprint:
        """Hardware, OS and runtime identity, with the threads and pinning this device uses."""
        ...

    def runtimes(self) -> list[str]:
        """Runtimes (of the formats table's) this device can run now."""
        ...

    def prepare(self, artifact: Path) -> Handle:
        """Put an exported artifact (.pte, .onnx) where the runtime can load it; verify it."""
        ...

    def benchmark(self, handle: Handle, request: BenchRequest,
                  on_event: EventHook | None = None) -> BenchResult:
        """Time the request's methods; failures become failed MethodResults, never exceptions."""
        ...

    def cleanup(self) -> None:
        """Remove what prepare() left on the device and close the transport."""
        ...


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Samples:
    """Accumulates timings under the stopping rule; used by the host worker and phone runners.

    The time cap counts wall time since the first sample (timing overhead included); the spread
    is re-checked at growing intervals so a method of microseconds does not spend its budget
    sorting its own samples.
    """

    request: BenchRequest
    values: list[float] = field(default_factory=list)
    started: float | None = None

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self.started is None else time.perf_counter() - self.started

    def add(self, ms: float) -> bool:
        """Record one timed call; True when timing should stop."""
        if self.started is None:
            self.started = time.perf_counter() - ms / 1000
        self.values.append(ms)
        n, r = len(self.values), self.request
        if n >= r.max_repeats or self.elapsed_s >= r.max_seconds:
            return True
        if n > 32 and n % max(1, n // 8):
            return False  # should_stop sorts the samples: at growing intervals only
        return should_stop(self.values, self.elapsed_s, r)
