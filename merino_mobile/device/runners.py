"""Runner programs on a phone: the command lines we send and the output we read back.

Four runners, each with a builder (argv) and a parser (text -> `RunnerTimings`):

- ExecuTorch's native `executor_runner` (examples/portable/executor_runner), built for arm64 with
  XNNPACK by `merino-mobile runner build`. Flags are gflags (`--model_path=...`). Logs go to
  stderr in the posix PAL format `I 00:00:01.234567 executorch:executor_runner.cpp:787] ...`;
  current versions log `Iteration i of n: x ms` per execution, all versions log
  `Model executed successfully n time(s) in x ms.`.
- ExecuTorch's Android benchmark app (`org.pytorch.minibench`), started with `am start`; it writes
  a JSON list of {benchmarkModel, metric, actualValue, targetValue} to its files dir.
- ONNX Runtime's `onnxruntime_perf_test`, which prints `Average inference time cost: x ms` and
  P50/P90 latencies in seconds.
- llama.cpp's `llama-bench` (tools/llama-bench), built for arm64 (`runner build --runtime
  llamacpp`); with `-o json` it prints a JSON array of tests, each with `n_prompt`, `n_gen`,
  `n_depth` and `samples_ns`, one per repetition.

A number a parser cannot read as a time (`1.2.3`, `nan`, a negative one) is never coerced or
raised: its line is recorded in `RunnerTimings.malformed` and `errors`, quoted, the timings are
not usable (`ok` is false, no samples), and the device reports the line as the method's error.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

ET_LOG = re.compile(
    r"^(?P<level>[DIEF]) (?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d)\.(?P<us>\d{6}) "
    r"executorch:(?P<file>[^:\]]+):(?P<line>\d+)\] (?P<msg>.*)$")
# Times are matched as any word and checked when read, so a malformed one is reported, not skipped.
ITERATION = re.compile(r"^Iteration (\d+) of (\d+): (\S+) ms$")
EXECUTED = re.compile(r"^Model executed successfully (\d+) time\(s\) in (\S+) ms\.$")
LOADED = re.compile(r"^Model loaded in (\S+) ms\.$")
THREADS = re.compile(r"^Resetting threadpool with num threads = (\d+)$")

MALFORMED = "malformed number (negative, infinite or not a number) in the runner's output"

MINIBENCH_PACKAGE = "org.pytorch.minibench"
MINIBENCH_ACTIVITY = "org.pytorch.minibench.BenchmarkActivity"


@dataclass
class RunnerTimings:
    """What a runner reported: per-execution times when it gives them, else only the total."""

    iterations_ms: list[float] = field(default_factory=list)
    executions: int = 0
    total_ms: float | None = None
    load_ms: float | None = None
    threads: int | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    errors: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # lines whose time could not be read

    @property
    def ok(self) -> bool:
        """A total over at least one execution, and no line that could not be read."""
        return self.executions > 0 and self.total_ms is not None and not self.malformed

    def samples(self, skip: int = 0) -> list[float]:
        """Per-execution samples without the first `skip` (warm-up); the mean when the runner
        only printed a total (older ExecuTorch versions). Empty when a line was malformed: the
        other numbers of that output are not to be trusted either."""
        if self.malformed:
            return []
        if self.iterations_ms:
            return self.iterations_ms[skip:]
        if self.ok and self.executions > skip:
            return [self.total_ms / self.executions]
        return []

    def error(self) -> str | None:
        """Why these timings are unusable or the runner failed: the first malformed line (quoted),
        else the runner's last error; None when it reported neither."""
        if self.malformed:
            return f"{MALFORMED}: {self.malformed[0]!r}"
        return self.errors[-1] if self.errors else None

    def _time(self, value: Any, line: str, scale: float = 1.0) -> float | None:
        """`value` (text or a JSON number) as a finite, non-negative time times `scale`; else
        None, with `line` recorded as malformed."""
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < 0:
            self.malformed.append(line)
            self.errors.append(f"{MALFORMED}: {line!r}")
            return None
        return number * scale

    def to_json(self) -> dict[str, Any]:
        return {"iterations_ms": self.iterations_ms, "executions": self.executions,
                "total_ms": self.total_ms, "load_ms": self.load_ms, "threads": self.threads,
                "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "errors": self.errors}


def executor_runner_argv(runner: str, model: str, *, method: str | None = None,
                         num_executions: int = 1, threads: int | None = None,
                         inputs: list[str] | None = None, input_shapes: list[str] | None = None,
                         output_file: str | None = None, etdump_path: str | None = None,
                         print_output: str = "none") -> list[str]:
    """argv for ExecuTorch's executor_runner. Flags are `--name=value` so every argv item is
    one word whatever the path holds; the transport quotes each item for the device shell."""
    argv = [runner, f"--model_path={model}", f"--num_executions={num_executions}",
            f"--print_output={print_output}"]
    if method:
        argv.append(f"--method_name={method}")
    if threads is not None:
        argv.append(f"--cpu_threads={threads}")
    if inputs:
        argv.append("--inputs=" + ",".join(inputs))
    if input_shapes:  # one entry per input ("1x128" or "" to keep the bound); dynamic shapes
        argv.append("--input_shapes=" + ",".join(input_shapes))
    if output_file:
        argv.append(f"--output_file={output_file}")
    if etdump_path:  # only runners built with the event tracer know this flag
        argv.append(f"--etdump_path={etdump_path}")
    return argv


def parse_executor_runner(text: str) -> RunnerTimings:
    """Timings from executor_runner's log (stderr, or stdout and stderr merged)."""
    t = RunnerTimings()
    for raw in text.splitlines():
        line = raw.strip()
        m = ET_LOG.match(line)
        if not m:
            if raw.startswith("ERROR: ") or raw.startswith("F "):
                t.errors.append(line)
            continue
        msg = m["msg"].strip()
        if m["level"] in "EF":
            t.errors.append(msg)
        if it := ITERATION.match(msg):
            if (ms := t._time(it[3], line)) is not None:
                t.iterations_ms.append(ms)
        elif ex := EXECUTED.match(msg):
            if (ms := t._time(ex[2], line)) is not None:
                t.executions, t.total_ms = int(ex[1]), ms
        elif ld := LOADED.match(msg):
            t.load_ms = t._time(ld[1], line)
        elif th := THREADS.match(msg):
            t.threads = int(th[1])
    return t


def minibench_argv(model_dir: str, num_iter: int, warmup: int) -> list[str]:
    """`am start` for ExecuTorch's Android benchmark app (extension/benchmark/android)."""
    return ["am", "start", "-W", "-S", "-n", f"{MINIBENCH_PACKAGE}/{MINIBENCH_ACTIVITY}",
            "--es", "model_dir", model_dir, "--ei", "num_iter", str(num_iter),
            "--ei", "num_warm_up_iter", str(warmup)]


def minibench_results_argv() -> list[str]:
    """Reads the app's result file from its private files dir."""
    return ["run-as", MINIBENCH_PACKAGE, "cat", "files/benchmark_results.json"]


def parse_minibench(text: str) -> RunnerTimings:
    """The app's benchmark_results.json: avg/trimmed-mean latency, load time, load status."""
    t = RunnerTimings()
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        t.errors.append(f"benchmark_results.json is not JSON: {e}")
        return t
    if not isinstance(records, list):
        t.errors.append(f"benchmark_results.json is not a list of records: {text.strip()[:200]!r}")
        return t
    metrics = {r.get("metric"): r for r in records if isinstance(r, dict)}

    def value(metric: str) -> float | None:
        record = metrics.get(metric)
        if record is None or record.get("actualValue") is None:
            return None
        return t._time(record["actualValue"], json.dumps(record))  # the record is the "line"

    if status := value("load_status"):
        t.errors.append(f"model load failed with ExecuTorch error {int(status)}")
    t.load_ms = value("model_load_time(ms)")
    trimmed = "trimmean_inference_latency(ms)"
    avg = value(trimmed if trimmed in metrics else "avg_inference_latency(ms)")
    if avg is not None:
        t.executions, t.total_ms = 1, avg
    return t


def ort_perf_test_argv(tool: str, model: str, *, runs: int, threads: int) -> list[str]:
    """onnxruntime_perf_test: CPU provider, fixed run count, generated inputs (-I)."""
    return [tool, "-e", "cpu", "-m", "times", "-r", str(runs), "-x", str(threads), "-I", model]


_ORT_NUM = r"(\S+)"  # read by RunnerTimings._time, which reports a malformed one


def parse_ort_perf_test(text: str) -> RunnerTimings:
    """Average (ms) and percentiles (s) from onnxruntime_perf_test's summary."""
    t = RunnerTimings()

    lines = [ln.strip() for ln in text.splitlines()]

    def read(pattern: str, scale: float) -> float | None:
        # The first line that matches: the tool prints each summary line once.
        for line in lines:
            if m := re.search(pattern, line):
                return t._time(m[1], line, scale)
        return None

    avg = read(r"Average inference time cost(?: total)?: " + _ORT_NUM + " ms", 1.0)
    if avg is not None:
        n = re.search(r"Total inference requests: (\d+)", text)
        t.executions = int(n[1]) if n else 1
        t.total_ms = avg * t.executions
    t.load_ms = read(r"Session creation time cost: " + _ORT_NUM + " s", 1e3)
    if m := re.search(r"Setting intra_op_num_threads to (\d+)", text):
        t.threads = int(m[1])
    t.p50_ms = read(r"P50 Latency: " + _ORT_NUM + " s", 1e3)
    t.p90_ms = read(r"P90 Latency: " + _ORT_NUM + " s", 1e3)
    t.errors += [ln for ln in lines if "[E:onnxruntime" in ln]
    return t


def llama_bench_argv(tool: str, model: str, *, prompt: int, generate: int, depth: int,
                     repetitions: int, threads: int) -> list[str]:
    """llama-bench for one test: a prefill of `prompt` tokens (`generate` 0), or `generate`
    tokens decoded one at a time, each after a cache filled with `depth` tokens (untimed)."""
    return [tool, "-m", model, "-p", str(prompt), "-n", str(generate), "-d", str(depth),
            "-r", str(repetitions), "-t", str(threads), "-o", "json"]


def parse_llama_bench(text: str) -> RunnerTimings:
    """llama-bench's JSON (stdout): the one test's repetitions as samples, in ms per call: a
    prefill's whole time, a generation's time per token."""
    t = RunnerTimings()
    start = text.find("[")
    try:
        if start < 0:
            raise json.JSONDecodeError("no JSON array", text, 0)
        tests = json.loads(text[start:])
    except json.JSONDecodeError as e:
        t.errors.append(f"llama-bench did not print its JSON (-o json): {e.msg}: "
                        f"{text.strip()[:200]!r}")
        return t
    if not isinstance(tests, list) or len(tests) != 1 or not isinstance(tests[0], dict):
        t.errors.append(f"llama-bench printed {text.strip()[:200]!r}, not one test")
        return t
    test = tests[0]
    per_call = max(1, int(test.get("n_gen") or 0))  # a generation's samples cover n_gen tokens
    for ns in test.get("samples_ns") or []:
        if (ms := t._time(ns, json.dumps({"samples_ns": ns}), 1e-6 / per_call)) is not None:
            t.iterations_ms.append(ms)
    t.executions, t.total_ms = len(t.iterations_ms), sum(t.iterations_ms)
    t.threads = test.get("n_threads")
    return t
