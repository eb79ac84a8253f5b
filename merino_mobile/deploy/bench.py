"""Benchmark an exported decoder on a device: load time, time to first token, prefill and decode
tokens per second, peak memory, size.

The exported decoder has one method, `forward(tokens int64 [1, T], start int64 [1])`, with a
dynamic T (ONNX adds the KV cache as explicit inputs, which the device fills with zeros):

- prefill (`pp P` in the llama-bench table): one call with T = P at start 0. Its time is the time
  to first token (TTFT); P * 1000 / TTFT is the prefill rate.
- decode (`tg G`): calls with T = 1 at real positions of P .. P+G-1, spread over them (at most
  DECODE_POSITIONS), one ms/token per run the mean over those positions; the per-position medians
  are kept in the result. A step of an ONNX or Core ML export attends its whole static cache, so
  it costs the same at every position; an ExecuTorch or llama.cpp step attends the positions up
  to its own, so it costs more as the generation goes on (`BenchReport.attends`, and
  `decode_context`: the table's context the bench is predicted at). Decode rate = 1000 / (ms per
  token).

Everything goes through the `Device` protocol (`prepare`, `benchmark` with `MethodSpec`s), so the
same code measures this host and a phone. Each phase is its own `benchmark` call (a fresh runtime
process on the host, a fresh runner on a phone): a cold load every time, as an app would see it.
Run r of N gives one TTFT and one decode time per token (the mean of run r over the positions);
medians and p10/p90 are over the N runs, after the device's warm-up calls.

`bench_side_by_side` benches several artifacts in interleaved rounds (A B C, C B A, ...) and
pools each one's runs: ratios between artifacts then come from measurements taken together
(`compare` uses it; on a shared machine, minutes apart can differ by a quarter).

Every bench is data: `record_measurement` stores it in the workspace's store
(`.merino-mobile/profile.db`, `merino_mobile.latency.store.Measurement`) with the card, the raw
samples, the artifact's hash and what the device's table predicted for it then, the moment it
is measured (`bench_artifact`), or once per artifact with every round pooled
(`bench_side_by_side`). The report's `measurement_id` is its row; the calibration
(`merino_mobile.latency.calibration`) is fitted on these rows.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

from merino_mobile.device.base import (
    BenchRequest,
    BenchResult,
    Device,
    Fingerprint,
    InputSpec,
    MethodResult,
    MethodSpec,
    percentile,
    two_speeds,
)
from merino_mobile.errors import UserError
from merino_mobile.export.build import attention_of
from merino_mobile.formats import for_artifact
from merino_mobile.target import Target, resolve_target
from merino_mobile.units import human_bytes, human_count
from merino_mobile.workspace import Workspace

SCHEMA_VERSION = 1
DECODE_POSITIONS = 2
DEFAULT_PROMPT = 128
DEFAULT_GENERATE = 128
DEFAULT_REPEAT = 5
DEFAULT_ROUNDS = 3  # interleaved rounds of a side-by-side bench (`compare`)
TOKEN = 1  # any valid id: the cost of a lookup does not depend on which row it reads


@dataclass(frozen=True)
class Stat:
    """Median and spread (p10, p90) of N runs."""

    median: float
    p10: float
    p90: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(percentile(values, 50), percentile(values, 10), percentile(values, 90),
                   len(values))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchReport:
    """One artifact measured on one device (see the module docstring for what each number is)."""

    artifact: str
    device: str
    runtime: str
    fingerprint: dict[str, Any]
    prompt: int
    generate: int
    repeat: int
    threads: int
    size_bytes: int
    ttft_ms: Stat
    prefill_tokens_per_s: Stat
    decode_ms_per_token: Stat
    decode_tokens_per_s: Stat
    decode_positions: dict[int, float]  # position -> median ms (the static-cache check)
    load_ms: float | None = None
    peak_rss_bytes: int | None = None
    card: str | None = None
    params: int | None = None
    quant: str | None = None
    cache_len: int | None = None
    cpus: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)
    ttft_samples_ms: list[float] = field(default_factory=list)  # one per timed prefill run
    decode_samples_ms: list[float] = field(default_factory=list)  # ms/token, one per run
    rounds: int = 1  # separate benches pooled into this report (`bench_side_by_side`)
    round_decode_ms: list[float] = field(default_factory=list)  # each pooled round's median
    measurement_id: int | None = None  # its row in the workspace's store, once recorded
    # what one decode step attends: "cache" (the whole static cache: ONNX, Core ML, older
    # ExecuTorch exports) or "position" (the positions up to its own: ExecuTorch, llama.cpp)
    attends: str = "cache"

    @property
    def decode_context(self) -> int:
        """The decode context this bench measured (`decode_context`)."""
        return decode_context(self.prompt, self.generate, self.cache_len, self.attends)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("ttft_ms", "prefill_tokens_per_s", "decode_ms_per_token",
                  "decode_tokens_per_s"):
            d[k] = getattr(self, k).to_json()
        d["decode_positions"] = {str(k): v for k, v in self.decode_positions.items()}
        return {"schema_version": SCHEMA_VERSION, **d}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchReport:
        d = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for k in ("ttft_ms", "prefill_tokens_per_s", "decode_ms_per_token",
                  "decode_tokens_per_s"):
            d[k] = Stat(**d[k])
        d["decode_positions"] = {int(k): v for k, v in d["decode_positions"].items()}
        return cls(**d)

    @classmethod
    def pooled(cls, parts: list[BenchReport]) -> BenchReport:
        """One report of an artifact benched in several rounds: the runs of every round pooled
        (statistics over all of them), each position's median the median of the rounds'."""
        if not parts:
            raise ValueError("no rounds to pool")
        if len({(p.artifact, p.prompt, p.generate) for p in parts}) != 1:
            raise ValueError("rounds of different artifacts or lengths cannot be pooled")
        first = parts[0]
        loads = [p.load_ms for p in parts if p.load_ms is not None]
        rss = [p.peak_rss_bytes for p in parts if p.peak_rss_bytes]
        stats = _stats(first.prompt, [t for p in parts for t in p.ttft_samples_ms],
                       [t for p in parts for t in p.decode_samples_ms])
        return replace(
            first, **stats,
            repeat=sum(p.repeat for p in parts), rounds=sum(p.rounds for p in parts),
            round_decode_ms=[m for p in parts
                             for m in (p.round_decode_ms or [p.decode_ms_per_token.median])],
            decode_positions={pos: percentile([p.decode_positions[pos] for p in parts], 50)
                              for pos in first.decode_positions},
            load_ms=percentile(loads, 50) if loads else None,
            peak_rss_bytes=max(rss) if rss else None,
            wall_s=round(sum(p.wall_s for p in parts), 3),
            raw={f"round {i + 1}": p.raw for i, p in enumerate(parts)})


def slow_runs(samples: list[float] | tuple[float, ...], repeat: int
              ) -> tuple[list[float], dict[str, Any]]:
    """The runs a pooled measurement is judged by, and its two-speed split: `samples` are
    `repeat` runs per bench in bench order; when the benches ran at two speeds (`two_speeds` of
    their medians) only the slow benches' runs, else all of them. A budget kept only in a
    shared machine's fast windows is not kept (docs/measurements.md, "Two speeds")."""
    samples = list(samples)
    if not samples:
        raise ValueError("no runs")
    n = max(1, repeat)
    benches = [samples[i:i + n] for i in range(0, len(samples), n)]
    medians = [percentile(b, 50) for b in benches]
    speeds = two_speeds(medians)
    if speeds["speeds"] == 2:
        samples = [x for b, m in zip(benches, medians, strict=True) if m >= speeds["cut_ms"]
                   for x in b]
    return samples, speeds


MEDIAN_CONFIDENCE = 0.9  # of `median_interval`, the interval the verify loop calls noise


def median_interval(values: list[float] | tuple[float, ...],
                    confidence: float = MEDIAN_CONFIDENCE) -> tuple[float, float]:
    """A distribution-free `confidence` interval of the median of `values`: the order
    statistics at ranks (n -+ z sqrt(n)) / 2, z the normal quantile (the binomial count of runs
    below the median, in its normal approximation). It narrows as runs are added, unlike the
    runs' own p10-p90 spread, so "within the noise" means the measurement cannot tell its
    median from the budget, not that some runs came in under it."""
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    n = len(s)
    half = NormalDist().inv_cdf((1 + confidence) / 2) * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, math.ceil(n / 2 + half) - 1)
    return s[lo], s[hi]


def _stats(prompt: int, ttft: list[float], per_token: list[float]) -> dict[str, Any]:
    """The report's statistics from its raw runs: TTFT and decode ms/token, and their rates."""
    return {"ttft_ms": Stat.of(ttft),
            "prefill_tokens_per_s": Stat.of([prompt * 1000 / t for t in ttft]),
            "decode_ms_per_token": Stat.of(per_token),
            "decode_tokens_per_s": Stat.of([1000 / t for t in per_token]),
            "ttft_samples_ms": list(ttft), "decode_samples_ms": list(per_token)}


# -- the artifact --------------------------------------------------------------------------------

def artifact_runtime(artifact: Path) -> str:
    """The runtime an artifact is for, from its suffix (the formats table)."""
    artifact = Path(artifact)
    runtime = for_artifact(artifact).runtime
    if not artifact.exists():
        raise UserError(f"{artifact}: no such file")
    return runtime


def artifact_meta(artifact: Path) -> dict[str, Any]:
    """What `export` wrote next to an artifact (card.json, export.json), when it is there."""
    from merino_mobile.card import Card

    folder = Path(artifact).parent
    meta: dict[str, Any] = {}
    if (folder / "export.json").is_file():
        meta["export"] = json.loads((folder / "export.json").read_text())
    if (folder / "card.json").is_file():
        meta["card"] = Card.from_json(json.loads((folder / "card.json").read_text()),
                                      str(folder / "card.json"))
    return meta


def artifact_size(artifact: Path) -> int:
    from merino_mobile.export import disk_size

    return disk_size(Path(artifact))


# -- the device ----------------------------------------------------------------------------------

def target_for(ws: Workspace, device: str | Target, artifact: Path) -> Target:
    """The target that runs `artifact`: `device` (a name, resolved here, or a Target) with the
    artifact's format."""
    fmt = for_artifact(artifact)
    if isinstance(device, Target):
        return device.using(fmt, device.quant)
    return resolve_target(ws, device, fmt.name)


def explain_failure(result: MethodResult, device: str, what: str) -> UserError:
    """A failed measurement as a UserError; out-of-memory deaths are named as such."""
    why = result.error or "no samples"
    low = why.lower()
    if "sigkill" in low or "memory" in low or "bad_alloc" in low or "oom" in low.split():
        return UserError(f"{what} on {device!r} ran out of memory? ({why}); the runtime process "
                         f"was killed or could not allocate: try a smaller card, int8/int4 "
                         f"weights, or a shorter --prompt/--generate")
    if "missing operator" in low or "0x14" in low:
        # ExecuTorch's "operator missing" status: a runner built without the LLM or quantized
        # kernels every exported decoder uses (a phone's runner of an older build)
        return UserError(f"{what} on {device!r} failed: {why}; the runner lacks a kernel the "
                         f"program uses (ExecuTorch's LLM or quantized kernels): rebuild it with "
                         f"`merino-mobile runner build` (docs/phones.md)")
    return UserError(f"{what} on {device!r} failed: {why}")


def decode_context(prompt: int, generate: int, cache_len: int | None, attends: str) -> int:
    """The decode context of a bench in the latency table's terms, the positions one decode step
    attends: the whole static cache (`attends` "cache"), or, for a step that attends up to its
    own position ("position"), the mean over the positions the bench times (the cost grows
    linearly with the position, so the mean position's cost is the mean cost)."""
    if attends == "position":
        attended = [p + 1 for p in decode_positions(prompt, generate)]  # slots 0..p
        return math.floor(sum(attended) / len(attended) + 0.5)
    return cache_len or prompt + generate


def decode_positions(prompt: int, generate: int) -> list[int]:
    """Up to DECODE_POSITIONS real decode positions spread over prompt .. prompt+generate-1."""
    last = prompt + generate - 1
    n = min(DECODE_POSITIONS, generate)
    if n == 1:
        return [prompt]
    return sorted({prompt + round(i * (last - prompt) / (n - 1)) for i in range(n)})


def bench_request(dev: Device, runtime: str, spec: MethodSpec, repeat: int) -> BenchRequest:
    """Exactly `repeat` timed calls after the device's warm-up (no early stop, no time cap)."""
    m = dev.profile.measure
    return BenchRequest(runtime, (spec,), warmup=max(1, m.warmup), min_repeats=repeat,
                        max_repeats=repeat, target_spread=m.target_spread, max_seconds=1e9,
                        timeout_s=m.timeout_s)


def decode_window_request(dev: Device, runtime: str, position: int,
                          seconds: float) -> BenchRequest:
    """Decode steps at `position`, timed for `seconds` whatever their spread (a fixed window)."""
    spec = MethodSpec("forward", (InputSpec((1, 1), "int64", TOKEN),
                                  InputSpec((1,), "int64", position)))
    m = dev.profile.measure
    return BenchRequest(runtime, (spec,), warmup=max(1, m.warmup), min_repeats=3,
                        max_repeats=1_000_000, target_spread=1.0, max_seconds=seconds,
                        timeout_s=m.timeout_s, min_seconds=seconds)


def bench_artifact(ws: Workspace, artifact: Path, device: str | Target, *,
                   prompt: int = DEFAULT_PROMPT, generate: int = DEFAULT_GENERATE,
                   repeat: int = DEFAULT_REPEAT, dev: Device | None = None,
                   record: bool = True, tag: str = "bench", rounds: int = 1) -> BenchReport:
    """Measure an exported decoder on a device (opened here unless `dev` is given); with
    `record`, store the measurement in the workspace (`record_measurement`, labelled `tag`).

    `rounds` > 1 benches it that many times in a row (each round its own runtime calls, so its
    own window of the device's time) and pools the runs (`BenchReport.pooled`): a shared
    machine's pace can flip for seconds at a time (docs/measurements.md, "Two speeds"), and one
    window of a few calls is one draw of it; `round_decode_ms` keeps each round's median, for
    `two_speeds`.
    """
    if prompt < 1 or generate < 1 or repeat < 1:
        raise UserError(f"--prompt, --generate and --repeat must be at least 1 (got {prompt}, "
                        f"{generate}, {repeat})")
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1 (got {rounds})")
    artifact = Path(artifact)
    target = target_for(ws, device, artifact)
    if rounds == 1:
        report = _bench_once(ws, artifact, target, prompt, generate, repeat, dev)
    else:
        own = dev is None
        dev = dev or target.open()
        try:
            report = BenchReport.pooled([_bench_once(ws, artifact, target, prompt, generate,
                                                     repeat, dev) for _ in range(rounds)])
        finally:
            if own:
                dev.cleanup()
    if record:
        report.measurement_id = store_bench(target, artifact, report, tag)
    return report


def store_bench(target: Target, artifact: Path, report: BenchReport, tag: str = "bench") -> int:
    """Store a bench of `artifact` made with `record=False` (`record_measurement`, with the
    artifact's card); the measurement's id. For a caller that looks at a bench before it
    decides what to store, as `design --verify` does with one that reads too fast."""
    return record_measurement(target_for(target.ws, target, artifact), report,
                              artifact_meta(artifact).get("card"), tag)


def _bench_once(ws: Workspace, artifact: Path, device: str | Target, prompt: int,
                generate: int, repeat: int, dev: Device | None) -> BenchReport:
    """One bench of `artifact` (the device opened here unless `dev` is given), not stored."""
    import time

    runtime = artifact_runtime(artifact)
    meta = artifact_meta(artifact)
    card = meta.get("card")
    cache_len = (meta.get("export") or {}).get("cache_len") or (card.context if card else None)
    if cache_len and prompt + generate > cache_len:
        raise UserError(f"{artifact} has a KV cache of {cache_len} positions; --prompt {prompt} + "
                        f"--generate {generate} does not fit: shorten them or export with "
                        f"--cache-len {prompt + generate}")
    target = target_for(ws, device, artifact)
    device = target.name
    own = dev is None
    dev = dev or target.open()
    t0 = time.perf_counter()
    try:
        if runtime not in dev.runtimes():
            raise UserError(f"device {device!r} cannot run {runtime} artifacts: it has "
                            f"{', '.join(dev.runtimes()) or 'no runtime'}")
        fp = dev.fingerprint(runtime, (meta.get("export") or {}).get("quant", "unknown"))
        handle = dev.prepare(artifact)
        prefill = MethodSpec("forward", (InputSpec((1, prompt), "int64", TOKEN),
                                         InputSpec((1,), "int64", 0)))
        pre = _one(dev, handle, bench_request(dev, runtime, prefill, repeat))
        pr = pre.results[0]
        if not pr.ok:
            raise explain_failure(pr, device, f"prefill of {prompt} tokens with {artifact.name}")
        decodes: dict[int, MethodResult] = {}
        raw = {"prefill": pre.to_json()}
        for pos in decode_positions(prompt, generate):
            spec = MethodSpec("forward", (InputSpec((1, 1), "int64", TOKEN),
                                          InputSpec((1,), "int64", pos)))
            res = _one(dev, handle, bench_request(dev, runtime, spec, repeat))
            raw[f"decode@{pos}"] = res.to_json()
            r = res.results[0]
            if not r.ok:
                raise explain_failure(r, device, f"decode at position {pos} with "
                                      f"{artifact.name}")
            decodes[pos] = r
    finally:
        if own:
            dev.cleanup()
    ttft = list(pr.samples_ms)
    n = min(len(r.samples_ms) for r in decodes.values())
    per_token = [sum(r.samples_ms[i] for r in decodes.values()) / len(decodes) for i in range(n)]
    rss = [r.peak_rss_bytes for r in (pr, *decodes.values()) if r.peak_rss_bytes]
    export = meta.get("export") or {}
    report = BenchReport(
        artifact=str(artifact), device=device, runtime=runtime, fingerprint=fp.to_json(),
        prompt=prompt, generate=generate, repeat=repeat, threads=pre.threads,
        size_bytes=artifact_size(artifact),
        **_stats(prompt, ttft, per_token),
        decode_positions={p: r.median for p, r in decodes.items()},
        load_ms=pr.load_ms, peak_rss_bytes=max(rss) if rss else None,
        card=card.name if card else export.get("card"),
        params=_params(card), quant=export.get("quant"), cache_len=cache_len,
        cpus=list(pre.cpus), wall_s=round(time.perf_counter() - t0, 3), raw=raw,
        attends=attention_of(export))
    return report


def artifact_sha256(artifact: Path) -> str:
    """sha256 of an artifact: of the file, or of a folder's files (a .mlpackage) by path."""
    from merino_mobile.device.base import file_sha256

    artifact = Path(artifact)
    if not artifact.is_dir():
        return file_sha256(artifact)
    h = hashlib.sha256()
    for p in sorted(q for q in artifact.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(artifact).as_posix()}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def _prediction_then(target: Target, card: Any, fp: Fingerprint, quant: str,
                     context: int) -> tuple[float | None, float | None, str | None]:
    """What the device's table (raw, and calibrated when a calibration applies) predicts for
    the card's decode step now: (raw ms, calibrated ms, table file), Nones where it cannot
    (no card, no table, a table of another setup or vocabulary)."""
    from merino_mobile.latency import predict_latency

    if card is None or quant not in target.format.quants:
        return None, None, None
    try:
        table = target.using(target.format, quant).table()
    except UserError:
        return None, None, None
    heads = {p.vocab for p, _ in table.entries.get("head", {}).get("decode", [])}
    if table.fingerprint.mismatch(fp) or (heads and card.vocab not in heads):
        return None, None, None
    try:
        raw = predict_latency(card, table.raw, context)
        # calibrated: the solver's linear model, the one the factors were fitted on
        calibrated = (predict_latency(card, table, context, cache_aware=False)
                      if table.calibrated else None)
    except UserError:  # a term the table never measured
        return None, None, table.source
    return raw, calibrated, table.source


def record_measurement(target: Target, report: BenchReport, card: Any,
                       tag: str = "bench") -> int:
    """Store a bench of a whole model in the workspace's store, committed before this returns,
    with what the device's table predicted for its decode step then; the measurement's id.

    The decode context is `BenchReport.decode_context`: the positions a decode step attended,
    its whole static cache or, for an artifact that follows the position, up to its own."""
    from merino_mobile.latency.store import Measurement, Store

    fp = Fingerprint.from_json(report.fingerprint)
    quant = report.quant or "unknown"
    context = report.decode_context
    predicted, calibrated, lut = _prediction_then(target, card, fp, quant, context)
    m = Measurement(
        device=report.device, fingerprint=fp.key, runtime=report.runtime, quant=quant,
        card_name=report.card, card=card.to_json() if card is not None else None,
        prompt=report.prompt, generate=report.generate, context=context,
        cache_len=report.cache_len, threads=report.threads, rounds=report.rounds,
        decode_samples_ms=tuple(report.decode_samples_ms),
        ttft_samples_ms=tuple(report.ttft_samples_ms),
        decode_median_ms=report.decode_ms_per_token.median,
        ttft_median_ms=report.ttft_ms.median, artifact=str(Path(report.artifact).resolve()),
        artifact_sha256=artifact_sha256(Path(report.artifact)), predicted_ms=predicted,
        calibrated_ms=calibrated, lut=lut, tag=tag)
    store = Store.open(target.ws.state)
    try:
        store.save_fingerprint(fp)
        return store.record_measurement(m)
    finally:
        store.close()


def round_order(n: int, r: int) -> list[int]:
    """The order round `r` benches `n` artifacts in: as given on even rounds, reversed on odd."""
    return list(range(n)) if r % 2 == 0 else list(reversed(range(n)))


def bench_side_by_side(ws: Workspace, artifacts: list[Path], device: str | Target, *,
                       prompt: int = DEFAULT_PROMPT, generate: int = DEFAULT_GENERATE,
                       repeat: int = DEFAULT_REPEAT, rounds: int = DEFAULT_ROUNDS,
                       on_round: Any = None, record: bool = True,
                       tag: str = "side-by-side") -> list[BenchReport]:
    """Bench several artifacts of one runtime in `rounds` interleaved rounds, one report each.

    Round r benches every artifact once (`repeat` timed runs per phase), in the given order on
    even rounds and reversed on odd ones (A B C, C B A, ...), so a load or clock that drifts
    during the run touches every artifact alike and ratios between them stay fair. Each report
    pools its artifact's runs of all rounds (`BenchReport.pooled`). `on_round(r, rounds)` is
    called before each round. With `record`, each pooled report is stored once
    (`record_measurement`, labelled `tag`), not round by round.
    """
    if not artifacts:
        raise UserError("nothing to bench")
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1 (got {rounds})")
    runtimes = {artifact_runtime(Path(a)) for a in artifacts}
    if len(runtimes) != 1:
        raise UserError(f"artifacts benched side by side must share one runtime, got "
                        f"{sorted(runtimes)}")
    target = target_for(ws, device, Path(artifacts[0]))
    dev = target.open()
    parts: dict[int, list[BenchReport]] = {i: [] for i in range(len(artifacts))}
    try:
        for r in range(rounds):
            if on_round:
                on_round(r, rounds)
            for i in round_order(len(artifacts), r):
                parts[i].append(bench_artifact(ws, Path(artifacts[i]), target, prompt=prompt,
                                               generate=generate, repeat=repeat, dev=dev,
                                               record=False))
    finally:
        dev.cleanup()
    reports = [BenchReport.pooled(parts[i]) for i in range(len(artifacts))]
    if record:
        for i, r in enumerate(reports):
            r.measurement_id = record_measurement(target, r, artifact_meta(artifacts[i]).get(
                "card"), tag)
    return reports


def _params(card: Any) -> int | None:
    from merino_mobile import accounting

    return accounting.params(card) if card is not None else None


def _one(dev: Device, handle: Any, request: BenchRequest) -> BenchResult:
    return dev.benchmark(handle, request)


# -- the llama-bench table -----------------------------------------------------------------------

def rate(s: Stat) -> str:
    """A tokens/s statistic as 'median [p10, p90]'."""
    if not math.isfinite(s.median):
        return "-"
    return f"{s.median:.2f} [{s.p10:.2f}, {s.p90:.2f}]"


def llama_bench_rows(reports: list[BenchReport]) -> list[dict[str, str]]:
    """Rows in the style of llama.cpp's llama-bench: one `pp P` and one `tg G` per artifact."""
    rows = []
    for r in reports:
        base = {"model": f"{r.card or Path(r.artifact).name} {r.quant or ''}".strip(),
                "size": human_bytes(r.size_bytes),
                "params": human_count(r.params) if r.params else "?",
                "runtime": r.runtime, "threads": str(r.threads)}
        rows.append(base | {"test": f"pp{r.prompt}", "t/s": rate(r.prefill_tokens_per_s)})
        rows.append(base | {"test": f"tg{r.generate}", "t/s": rate(r.decode_tokens_per_s)})
    return rows


def llama_bench_table(reports: list[BenchReport], title: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title)
    cols = ("model", "size", "params", "runtime", "threads", "test", "t/s")
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "runtime") else "right")
    for row in llama_bench_rows(reports):
        table.add_row(*(row[c] for c in cols))
    return table


def llama_bench_markdown(reports: list[BenchReport]) -> str:
    cols = ("model", "size", "params", "runtime", "threads", "test", "t/s")
    lines = ["| " + " | ".join(cols) + " |",
             "| " + " | ".join("---:" if c not in ("model", "runtime") else "---" for c in cols)
             + " |"]
    lines += ["| " + " | ".join(row[c] for c in cols) + " |" for row in llama_bench_rows(reports)]
    return "\n".join(lines)
