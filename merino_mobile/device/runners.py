"""Runner programs on a phone: the command lines we send and the output we read back.

Three runners, each with a builder (argv) and a parser (text -> `RunnerTimings`):

- ExecuTorch's native `executor_runner` (examples/portable/executor_runner), built for arm64 with
  XNNPACK by `merino-mobile runner build`. Flags are gflags (`--model_path=...`). Logs go to
  stderr in the posix PAL format `I 00:00:01.234567 executorch:executor_runner.cpp:787] ...`;
  current versions log `Iteration i of n: x ms` per execution, all versions log
  `Model executed successfully n time(s) in x ms.`.
- ExecuTorch's Android benchmark app (`org.pytorch.minibench`), started with `am start`; it writes
  a JSON list of {benchmarkModel, metric, actualValue, targetValue} to its files dir.
- ONNX Runtime's `onnxruntime_perf_test`, which prints `Average inference time cost: x ms` and
  P50/P90 latencies in seconds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

ET_LOG = re.compile(
    r"^(?P<level>[DIEF]) (?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d)\.(?P<us>\d{6}) "
    r"executorch:(?P<file>[^:\]]+):(?P<line>\d+)\] (?P<msg>.*)$")
ITERATION = re.compile(r"^Iteration (\d+) of (\d+): ([0-9.eE+-]+) ms$")
EXECUTED = re.compile(r"^Model executed successfully (\d+) time\(s\) in ([0-9.eE+-]+) ms\.$")
LOADED = re.compile(r"^Model loaded in ([0-9.eE+-]+) ms\.$")
THREADS = re.compile(r"^Resetting threadpool with num threads = (\d+)$")

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

    @property
    def ok(self) -> bool:
        return self.executions > 0 and self.total_ms is not None

    def samples(self, skip: int = 0) -> list[float]:
        """Per-execution samples without the first `skip` (warm-up); the mean when the runner
        only printed a total (older ExecuTorch versions)."""
        if self.iterations_ms:
            return self.iterations_ms[skip:]
        if self.ok and self.executions > skip:
            return [self.total_ms / self.executions]
        return []

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
        m = ET_LOG.match(raw.strip())
        if not m:
            if raw.startswith("ERROR: ") or raw.startswith("F "):
                t.errors.append(raw.strip())
            continue
        msg = m["msg"].strip()
        if m["level"] in "EF":
            t.errors.append(msg)
        if it := ITERATION.match(msg):
            t.iterations_ms.append(float(it[3]))
        elif ex := EXECUTED.match(msg):
            t.executions, t.total_ms = int(ex[1]), float(ex[2])
        elif ld := LOADED.match(msg):
            t.load_ms = float(ld[1])
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
    metrics = {r.get("metric"): r.get("actualValue") for r in records if isinstance(r, dict)}
    if metrics.get("load_status", 0) not in (0, 0.0, None):
        t.errors.append(f"model load failed with ExecuTorch error {int(metrics['load_status'])}")
    t.load_ms = metrics.get("model_load_time(ms)")
    avg = metrics.get("trimmean_inference_latency(ms)", metrics.get("avg_inference_latency(ms)"))
    if avg is not None:
        t.executions, t.total_ms = 1, float(avg)
    return t


def ort_perf_test_argv(tool: str, model: str, *, runs: int, threads: int) -> list[str]:
    """onnxruntime_perf_test: CPU provider, fixed run count, generated inputs (-I)."""
    return [tool, "-e", "cpu", "-m", "times", "-r", str(runs), "-x", str(threads), "-I", model]


_ORT_NUM = r"([0-9.eE+-]+)"


def parse_ort_perf_test(text: str) -> RunnerTimings:
    """Average (ms) and percentiles (s) from onnxruntime_perf_test's summary."""
    t = RunnerTimings()
    if m := re.search(r"Average inference time cost(?: total)?: " + _ORT_NUM + " ms", text):
        avg = float(m[1])
        n = re.search(r"Total inference requests: (\d+)", text)
        t.executions = int(n[1]) if n else 1
        t.total_ms = avg * t.executions
    if m := re.search(r"Session creation time cost: " + _ORT_NUM + " s", text):
        t.load_ms = float(m[1]) * 1e3
    if m := re.search(r"Setting intra_op_num_threads to (\d+)", text):
        t.threads = int(m[1])
    if m := re.search(r"P50 Latency: " + _ORT_NUM + " s", text):
        t.p50_ms = float(m[1]) * 1e3
    if m := re.search(r"P90 Latency: " + _ORT_NUM + " s", text):
        t.p90_ms = float(m[1]) * 1e3
    t.errors += [ln.strip() for ln in text.splitlines() if "[E:onnxruntime" in ln]
    return t
