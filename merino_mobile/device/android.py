"""A phone as a device: what it says about itself, and how the profiler measures on it.

`AndroidPhone` is the profiler's view of a phone reached through an `AdbTransport`
(adb_transport.py; the phone knows nothing of sockets or USB): fingerprint from getprop and /sys,
artifacts and the runner pushed once under /data/local/tmp/merino-mobile/<sha256>/ and verified
with sha256sum on the phone, runs pinned with taskset to the big cores at a fixed thread count,
thermal cooldown before each batch with the temperatures recorded next to the timings. Four
runners: ExecuTorch's native executor_runner, ExecuTorch's benchmark app, onnxruntime_perf_test,
llama.cpp's llama-bench (their command lines and output formats are in runners.py).

Also here: the parsers of what the phone reports (getprop, cpufreq, thermal zones), the phone's
readiness checklist (`readiness`: transport, phone visible, key accepted, model, runner and its
version, thermal zones, in that order), and the backend entry points the device registry calls,
`open_device(profile)`, `readiness(profile, runtime)` and `probe(profile)`. `DeviceGone`
(the phone went away mid-run) is raised by the transport and re-exported here for callers.
"""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
import secrets
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merino_mobile.device import adb_transport, checklist, runners
from merino_mobile.device.adb_transport import (
    UNAUTHORIZED,
    UNAUTHORIZED_FIX,
    UNAUTHORIZED_WHAT,
    AdbTransport,
    DeviceGone,
    usb_serial,
)
from merino_mobile.device.base import (
    BenchRequest,
    BenchResult,
    EventHook,
    Fingerprint,
    Handle,
    MethodResult,
    MethodSpec,
    Probe,
    RunResult,
    Samples,
    file_sha256,
)
from merino_mobile.device.profiles import DeviceProfile
from merino_mobile.device.pte_inputs import fit_inputs, input_files, pte_input_bounds
from merino_mobile.errors import UserError
from merino_mobile.files import utc_now

__all__ = ["AndroidPhone", "DeviceGone", "PhoneBenchResult", "PhoneFacts", "open_device",
           "probe", "readiness"]

UNREADABLE = ("no timing of this run is used; rerun, and if the line repeats, rebuild the "
              "runner for this ExecuTorch/ONNX Runtime version or report the line")
RUNNER_BUILD = "`merino-mobile runner build --ndk DIR --executorch-src DIR` (docs/phones.md)"
RUNNER_MISSING_FIX = ("build one with " + RUNNER_BUILD + ", or set runner = \"PATH\" under [adb] "
                      "in {path}")
RUNNER_MISSING = "no ExecuTorch runner binary for {name}: " + RUNNER_MISSING_FIX
ORT_MISSING_FIX = ("set onnxruntime_perf_test = \"PATH\" under [adb] in {path} (an arm64 build "
                   "from ONNX Runtime's Android build)")
LLAMA_BENCH_MISSING_FIX = ("build llama.cpp's llama-bench for the phone with `merino-mobile runner "
                           "build --runtime llamacpp --ndk DIR --llama-cpp-src DIR` "
                           "(docs/phones.md) and "
                           "set llama_bench = \"PATH\" under [adb] in {path}")
APP_MISSING_FIX = ("build and install extension/benchmark/android/benchmark (./gradlew "
                   "installDebug), or build the native runner")


# -- phone facts ---------------------------------------------------------------------------------

CPU_FREQ_SCRIPT = ("for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; do "
                   "printf '%s %s\\n' \"$f\" \"$(cat \"$f\")\"; done")
THERMAL_SCRIPT = ("for z in /sys/class/thermal/thermal_zone*; do "
                  "printf '%s\\t%s\\n' \"$(cat \"$z/type\")\" \"$(cat \"$z/temp\")\"; done")


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` listing ([key]: [value] lines) as a dict."""
    props = {}
    for line in text.splitlines():
        if line.startswith("[") and "]: [" in line and line.endswith("]"):
            k, _, v = line[1:-1].partition("]: [")
            props[k] = v
    return props


def parse_cpu_max_freq(text: str) -> dict[int, int]:
    """core -> cpuinfo_max_freq (kHz) from CPU_FREQ_SCRIPT's output."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            core = parts[0].split("/cpu/cpu")[-1].split("/")[0]
            if core.isdigit():
                out[int(core)] = int(parts[1])
    return out


def big_cores(max_freq: dict[int, int]) -> tuple[int, ...]:
    """The cluster with the highest maximum frequency (X1 on Tensor G2, X3/X4 prime cores...)."""
    if not max_freq:
        return ()
    top = max(max_freq.values())
    return tuple(sorted(c for c, f in max_freq.items() if f == top))


def cpu_mask(cpus: Sequence[int]) -> str:
    """taskset mask in hex without 0x (toybox's format): cores 6,7 -> 'c0'."""
    return format(sum(1 << c for c in cpus), "x")


def parse_thermal(text: str) -> dict[str, float]:
    """zone type -> °C. Zones report millidegrees (or degrees on a few old kernels); zones with
    nonsense readings (disabled sensors report -273000 or 0) are dropped."""
    temps: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, raw = line.partition("\t")
        try:
            v = float(raw.strip())
        except ValueError:
            continue
        c = v / 1000 if abs(v) >= 1000 else v
        if 0 < c < 150:
            key, i = kind.strip() or "zone", 2
            while key in temps:
                key, i = f"{kind.strip()}#{i}", i + 1
            temps[key] = round(c, 1)
    return temps


@dataclass
class PhoneFacts:
    """What a phone says about itself: properties, cluster frequencies, thermal zones."""

    props: dict[str, str]
    max_freq_khz: dict[int, int]

    @property
    def model(self) -> str:
        return self.props.get("ro.product.model", "unknown")

    @property
    def soc(self) -> str:
        for k in ("ro.soc.model", "ro.board.platform", "ro.hardware"):
            if self.props.get(k):
                return self.props[k]
        return "unknown"

    @property
    def os(self) -> str:
        build = self.props.get("ro.build.id") or self.props.get("ro.build.fingerprint", "")
        return f"Android {self.props.get('ro.build.version.release', '?')} ({build})"

    @property
    def abi(self) -> str:
        return self.props.get("ro.product.cpu.abi", "unknown")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "soc": self.soc, "os": self.os, "abi": self.abi,
                "max_freq_khz": {str(k): v for k, v in sorted(self.max_freq_khz.items())},
                "big_cores": list(big_cores(self.max_freq_khz))}


# -- device --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PhoneBenchResult(BenchResult):
    """A phone batch: the timings plus the temperatures around them and the cooldown wait."""

    temps_before_c: dict[str, float] = field(default_factory=dict)
    temps_after_c: dict[str, float] = field(default_factory=dict)
    cooldown_wait_s: float = 0.0
    cooled: bool = True
    outputs: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return super().to_json() | {
            "temps_before_c": self.temps_before_c, "temps_after_c": self.temps_after_c,
            "cooldown_wait_s": self.cooldown_wait_s, "cooled": self.cooled,
            "outputs": self.outputs}


class AndroidPhone:
    """A phone the profiler measures on, reached through an AdbTransport.

    (Not adb-shell's `AdbDevice`: that is the ADB connection the transport wraps.)"""

    replicates = False  # executor_runner runs one instance of a method per process

    def __init__(self, profile: DeviceProfile, transport: AdbTransport | None = None,
                 runner: Path | str | None = None) -> None:
        if profile.adb is None:
            raise UserError(f"{profile.path}: transport \"adb\" needs an [adb] table")
        self.profile, self.name = profile, profile.name
        settings = profile.adb
        self.transport = transport or AdbTransport.from_settings(
            settings, auth_timeout_s=float(settings.extra.get("auth_timeout_s", 30.0)))
        self.remote_dir = settings.remote_dir.rstrip("/") or "/data/local/tmp/merino-mobile"
        # runner = "minibench": ExecuTorch's Android benchmark app instead of the native runner.
        self.app = (runner or settings.runner) == "minibench"
        self._app_installed: bool | None = None
        self.runner = None if self.app else self._local(runner or settings.runner)
        self.ort_tool = self._local(settings.extra.get("onnxruntime_perf_test"))
        self.llama_tool = self._local(settings.extra.get("llama_bench"))
        self.zones = tuple(settings.extra.get("thermal_zones", ()))
        self.session = posixpath.join(self.remote_dir, f"run-{secrets.token_hex(4)}")
        self._facts: PhoneFacts | None = None
        self._pushed: dict[str, str] = {}  # sha256 -> remote path
        self._bounds: dict[str, dict[str, list[tuple[int, ...] | None]]] = {}  # by .pte sha256
        self._made: list[str] = []
        self._outputs = Path(tempfile.mkdtemp(prefix=f"merino-{self.name}-"))

    def _local(self, value: Any) -> Path | None:
        return local_tool(self.profile, value)

    # facts
    def facts(self) -> PhoneFacts:
        """Properties and CPU clusters, read once; the phone must be the profile's model."""
        if self._facts is None:
            props = parse_getprop(self.transport.check(["getprop"], "getprop"))
            freq = parse_cpu_max_freq(self.transport.check(
                ["sh", "-c", CPU_FREQ_SCRIPT], "reading CPU frequencies"))
            facts = PhoneFacts(props, freq)
            expect = self.profile.adb.extra.get("expect_model") if self.profile.adb else None
            if expect and facts.model not in ([expect] if isinstance(expect, str) else expect):
                raise UserError(f"{self.profile.path} is for {expect} but the phone at "
                                f"{self.transport.target} is a {facts.model!r}: use that phone's "
                                "profile (or copy one and set expect_model)")
            self._facts = facts
        return self._facts

    def cpus(self) -> tuple[int, ...]:
        """The cores runs are pinned to: the profile's, else the fastest cluster."""
        return tuple(self.profile.cpus) or big_cores(self.facts().max_freq_khz)

    def temperatures(self) -> dict[str, float]:
        """°C per thermal zone (the profile's `thermal_zones` under [adb], else all of them)."""
        temps = parse_thermal(self.transport.run(["sh", "-c", THERMAL_SCRIPT]).stdout)
        if self.zones:
            temps = {k: v for k, v in temps.items() if k.split("#")[0] in self.zones}
        return temps

    def cooldown(self) -> tuple[dict[str, float], float, bool]:
        """Wait (bounded by max_wait_s) until the hottest zone is below max_temp_c.

        Returns the temperatures measured last, the seconds waited, and whether it cooled."""
        c = self.profile.cooldown
        start = time.monotonic()
        temps = self.temperatures()
        if c.max_temp_c is not None:
            while temps and max(temps.values()) >= c.max_temp_c:
                if time.monotonic() - start + c.wait_s > c.max_wait_s:
                    return temps, time.monotonic() - start, False
                time.sleep(c.wait_s)
                temps = self.temperatures()
        return temps, time.monotonic() - start, True

    def fingerprint(self, runtime: str, quant: str) -> Fingerprint:
        f = self.facts()
        tool = {"executorch": self.runner, "llamacpp": self.llama_tool}.get(runtime, self.ort_tool)
        version = f"{tool.name} sha256:{file_sha256(tool)[:12]}" if tool and tool.exists() else "?"
        if runtime == "executorch" and self.app:
            version = f"{runners.MINIBENCH_PACKAGE} (ExecuTorch benchmark app)"
        return Fingerprint(
            device=self.name, model=f.model, cpu=f.soc, cores=len(f.max_freq_khz) or 0,
            os=f.os, abi=f.abi, runtime=runtime, runtime_version=version,
            threads=self.profile.threads, quant=quant, cpus=self.cpus(),
            date=utc_now()[:10])

    def app_installed(self) -> bool:
        """Whether ExecuTorch's benchmark app (org.pytorch.minibench) is on the phone."""
        if self._app_installed is None:
            r = self.transport.run(["pm", "list", "packages", runners.MINIBENCH_PACKAGE])
            self._app_installed = f"package:{runners.MINIBENCH_PACKAGE}" in r.stdout.split()
        return self._app_installed

    def runtimes(self) -> list[str]:
        native = self.runner is not None and self.runner.exists()
        have = {"executorch": native or (self.app and self.app_installed()),
                "onnxruntime": self.ort_tool is not None and self.ort_tool.exists(),
                "llamacpp": self.llama_tool is not None and self.llama_tool.exists()}
        return [r for r in self.profile.runtimes if have.get(r)]

    # files
    def _push_once(self, local: Path) -> str:
        """Push `local` to <remote_dir>/<sha256>/<name> unless the phone already has it."""
        sha = file_sha256(local)
        if sha in self._pushed:
            return self._pushed[sha]
        remote = posixpath.join(self.remote_dir, sha, local.name)
        if self.transport.sha256(remote) != sha:
            self.transport.push(local, remote)
            self._made.append(posixpath.dirname(remote))
        self._pushed[sha] = remote
        return remote

    def _tool_for(self, runtime: str) -> Path | None:
        if runtime == "executorch" and self.app:
            if not self.app_installed():
                raise UserError(f"{self.profile.path} uses ExecuTorch's benchmark app "
                                "(runner = \"minibench\") but it is not installed on the phone: "
                                + APP_MISSING_FIX)
            return None
        tool = {"executorch": self.runner, "llamacpp": self.llama_tool}.get(runtime, self.ort_tool)
        if tool is None or not tool.exists():
            if runtime == "executorch":
                raise UserError(RUNNER_MISSING.format(name=self.name, path=self.profile.path))
            if runtime == "llamacpp":
                raise UserError(f"no llama-bench for {self.name}: "
                                + LLAMA_BENCH_MISSING_FIX.format(path=self.profile.path))
            raise UserError(f"no onnxruntime_perf_test for {self.name}: "
                            + ORT_MISSING_FIX.format(path=self.profile.path))
        return tool

    def prepare(self, artifact: Path) -> Handle:
        artifact = Path(artifact)
        runtime = {".pte": "executorch", ".onnx": "onnxruntime",
                   ".gguf": "llamacpp"}.get(artifact.suffix)
        if runtime is None:
            raise UserError(f"{artifact}: phones run .pte (ExecuTorch), .onnx (ONNX Runtime) or "
                            f".gguf (llama.cpp)")
        if not artifact.is_file():
            raise UserError(f"{artifact}: no such file")
        tool = self._tool_for(runtime)
        if tool is not None:
            self._push_once(tool)
        remote = self._push_once(artifact)
        sha = file_sha256(artifact)
        if runtime == "executorch" and not self.app:
            self._bounds[sha] = pte_input_bounds(artifact)
        return Handle(artifact, remote, runtime, sha, artifact.stat().st_size)

    # running
    def benchmark(self, handle: Handle, request: BenchRequest,
                  on_event: EventHook | None = None) -> BenchResult:
        """Time each method with the runner pinned to the big cores; the batch starts after
        the cooldown and records temperatures before and after. A crash or hang of the runner
        is that method's error; a lost connection raises DeviceGone."""
        t0 = time.monotonic()
        local_tool = self._tool_for(handle.runtime)
        tool = self._push_once(local_tool) if local_tool is not None else ""
        temps_before, waited, cooled = self.cooldown()
        results, outputs = [], {}
        for i, method in enumerate(request.methods):
            if on_event:
                on_event("start", method.name, 0)
            if handle.runtime == "executorch" and self.app:
                res, outs = self._bench_minibench(handle, method, request), []
            elif handle.runtime == "executorch":
                res, outs = self._bench_executorch(tool, handle, method, request, i)
            elif handle.runtime == "llamacpp":
                res, outs = self._bench_llama(tool, handle, method, request), []
            else:
                res, outs = self._bench_ort(tool, handle, method, request), []
            results.append(res)
            outputs[method.name] = [str(p) for p in outs]
            if on_event:
                on_event("done" if res.ok else "failed", method.name, 0)
        # The app picks its own threads and cores; only the native runner is pinned.
        threads, cpus = (0, ()) if self.app else (self.profile.threads, self.cpus())
        return PhoneBenchResult(
            tuple(results), threads, cpus, time.monotonic() - t0,
            temps_before_c=temps_before, temps_after_c=self.temperatures(),
            cooldown_wait_s=round(waited, 3), cooled=cooled, outputs=outputs)

    def _pinned(self, argv: list[str]) -> list[str]:
        cpus = self.cpus()
        return ["taskset", cpu_mask(cpus), *argv] if cpus else argv

    def _bench_executorch(self, tool: str, handle: Handle, method: MethodSpec,
                          request: BenchRequest, index: int) -> tuple[MethodResult, list[Path]]:
        work = posixpath.join(self.session, f"{handle.sha256[:12]}-{index}")
        inputs = []
        try:
            files, shapes = fit_inputs(method, input_files(method),
                                       self._bounds.get(handle.sha256, {}).get(method.name))
        except UserError as e:
            return MethodResult(method.name, (), str(e)), []
        with tempfile.TemporaryDirectory() as tmp:
            for j, data in enumerate(files):
                local = Path(tmp) / f"input-{j}.bin"
                local.write_bytes(data)
                inputs.append(self._push_once(local))
        samples = Samples(request)
        out_base = posixpath.join(work, "output")
        self.transport.check(["mkdir", "-p", work], "mkdir for outputs")
        self._made.append(work)
        n = request.warmup + request.min_repeats
        load_ms = None
        for _ in range(8):  # bounded: the stopping rule normally ends it in one or two runs
            argv = self._pinned(runners.executor_runner_argv(
                tool, handle.remote, method=method.name, num_executions=n,
                threads=self.profile.threads, inputs=inputs,
                input_shapes=shapes if any(shapes) else None, output_file=out_base))
            r = self.transport.run(argv, timeout=request.timeout_s)
            if r.timed_out:
                return MethodResult(method.name, tuple(samples.values),
                                    f"runner timed out after {request.timeout_s:g}s"), []
            timings = runners.parse_executor_runner(r.stderr + "\n" + r.stdout)
            new = timings.samples(skip=request.warmup)
            if timings.malformed:
                return MethodResult(method.name, tuple(samples.values),
                                    f"{timings.error()}: {UNREADABLE}"), []
            if r.returncode != 0 or not new:
                why = timings.error() or _last_line(r)
                return MethodResult(method.name, tuple(samples.values),
                                    f"runner failed (exit {r.returncode}): {why}"), []
            load_ms = timings.load_ms if load_ms is None else load_ms  # the first, cold load
            if any(samples.add(s) for s in new):
                break
            left = request.max_repeats - len(samples.values)
            per = max(1e-3, sorted(new)[len(new) // 2])
            by_time = math.ceil(max(0.0, request.max_seconds - samples.elapsed_s) * 1e3 / per)
            n = request.warmup + max(1, min(left, by_time))
        local_dir = self._outputs / f"{handle.sha256[:12]}-{method.name}"
        pulled, _refused = self.transport.pull_tree(work, local_dir)
        return MethodResult(method.name, tuple(samples.values), load_ms=load_ms), pulled

    def _bench_minibench(self, handle: Handle, method: MethodSpec,
                         request: BenchRequest) -> MethodResult:
        """One app run: it times `max_repeats` forward calls after `warmup` and reports their
        trimmed mean (the app keeps no per-call samples), which is the one sample returned."""
        if method.name != "forward":
            return MethodResult(method.name, (), "ExecuTorch's benchmark app runs only the "
                                "'forward' method; build the native runner (`merino-mobile "
                                "runner build`) for multi-method micro-benchmarks")
        results = runners.minibench_results_argv()
        self.transport.run([*results[:2], "rm", "-f", results[-1]])
        r = self.transport.run(runners.minibench_argv(
            posixpath.dirname(handle.remote), request.max_repeats, request.warmup),
            timeout=request.timeout_s)
        if not r.ok:
            why = "timed out" if r.timed_out else _last_line(r)
            return MethodResult(method.name, (), f"benchmark app did not start: {why}")
        deadline = time.monotonic() + request.timeout_s
        while True:  # `am start -W` returns at launch; the activity writes its file when done
            out = self.transport.run(results)
            t = runners.parse_minibench(out.stdout) if out.ok else None
            if t is not None and (t.ok or t.errors):
                break
            if time.monotonic() > deadline:
                return MethodResult(method.name, (), f"benchmark app wrote no results within "
                                    f"{request.timeout_s:g}s")
            time.sleep(1.0)
        if t.malformed:
            return MethodResult(method.name, (), f"benchmark app: {t.error()}: {UNREADABLE}")
        if not t.ok:
            return MethodResult(method.name, (), f"benchmark app: {t.error()}")
        return MethodResult(method.name, tuple(t.samples()), load_ms=t.load_ms)

    def _bench_ort(self, tool: str, handle: Handle, method: MethodSpec,
                   request: BenchRequest) -> MethodResult:
        # onnxruntime_perf_test reports aggregates only: each run's mean is one sample.
        samples = Samples(request)
        for _ in range(max(1, request.min_repeats)):
            argv = self._pinned(runners.ort_perf_test_argv(
                tool, handle.remote, runs=max(1, request.min_repeats),
                threads=self.profile.threads))
            r = self.transport.run(argv, timeout=request.timeout_s)
            if r.timed_out:
                return MethodResult(method.name, tuple(samples.values),
                                    f"onnxruntime_perf_test timed out after "
                                    f"{request.timeout_s:g}s")
            t = runners.parse_ort_perf_test(r.stdout + r.stderr)
            if t.malformed:
                return MethodResult(method.name, tuple(samples.values),
                                    f"onnxruntime_perf_test: {t.error()}: {UNREADABLE}")
            if r.returncode != 0 or not t.ok:
                why = t.error() or _last_line(r)
                return MethodResult(method.name, tuple(samples.values),
                                    f"onnxruntime_perf_test failed (exit {r.returncode}): {why}")
            if samples.add(t.total_ms / t.executions):
                break
        return MethodResult(method.name, tuple(samples.values))

    def _bench_llama(self, tool: str, handle: Handle, method: MethodSpec,
                     request: BenchRequest) -> MethodResult:
        """One `forward(tokens [1, T], start [1])` call as llama-bench times it: T > 1 from
        start 0 is a prefill of T tokens (`-p T`); T = 1 at position p is one token decoded
        after p cached ones (`-n 1 -d p`, the depth filled untimed). llama-bench runs its own
        warm-up, then `min_repeats` timed repetitions, each one sample."""
        tokens, start = method.inputs[0].shape[-1], method.inputs[1].fill
        if not isinstance(start, int) or (tokens > 1 and start != 0):
            return MethodResult(method.name, (), f"llama-bench times a prefill from position 0 "
                                f"or one decoded token at a position, not {tokens} tokens at "
                                f"{start!r}")
        prompt, generate = (tokens, 0) if tokens > 1 else (0, 1)
        argv = self._pinned(runners.llama_bench_argv(
            tool, handle.remote, prompt=prompt, generate=generate, depth=start,
            repetitions=max(1, request.min_repeats), threads=self.profile.threads))
        r = self.transport.run(argv, timeout=request.timeout_s)
        if r.timed_out:
            return MethodResult(method.name, (), f"llama-bench timed out after "
                                f"{request.timeout_s:g}s")
        t = runners.parse_llama_bench(r.stdout)
        if t.malformed:
            return MethodResult(method.name, (), f"llama-bench: {t.error()}: {UNREADABLE}")
        if r.returncode != 0 or not t.ok:
            why = t.error() if r.returncode == 0 else _last_line(r)
            return MethodResult(method.name, (), f"llama-bench failed (exit {r.returncode}): "
                                f"{why}")
        return MethodResult(method.name, tuple(t.samples()))

    def cleanup(self) -> None:
        """Remove this session's files from the phone (the runner stays: pushed once, reused)."""
        keep = {posixpath.dirname(p) for sha, p in self._pushed.items()
                if self.runner and p.endswith("/" + self.runner.name)}
        gone = [d for d in dict.fromkeys(self._made + [self.session]) if d not in keep]
        with contextlib.suppress(UserError):
            if gone:
                self.transport.run(["rm", "-rf", *gone])
        self._pushed.clear()
        self._made.clear()
        self.transport.close()


def local_tool(profile: DeviceProfile, value: Any) -> Path | None:
    """A runner path from the profile: ~ expanded, relative to the profile's folder if there."""
    if not value:
        return None
    p = Path(str(value)).expanduser()
    if not p.is_absolute():
        near = profile.path.parent / p
        p = near if near.exists() else p.resolve()
    return p


def _last_line(r: RunResult) -> str:
    lines = (r.stderr.strip() or r.stdout.strip()).splitlines()
    return lines[-1] if lines else "no output"


# -- readiness: what the phone needs, in order ---------------------------------------------------

class _PhoneWalk:
    """The ordered checks of one phone; each step may use what the steps before it found."""

    def __init__(self, profile: DeviceProfile, runtime: str | None,
                 auth_timeout_s: float | None) -> None:
        assert profile.adb is not None
        self.profile, self.settings = profile, profile.adb
        self.runtime = runtime or (profile.runtimes[0] if profile.runtimes else "executorch")
        self.auth_timeout_s = (auth_timeout_s if auth_timeout_s is not None
                               else float(self.settings.extra.get("auth_timeout_s", 30.0)))
        self.transport: AdbTransport | None = None
        self.props: dict[str, str] = {}
        self.tool: Path | None = None

    def run(self) -> list[checklist.Check]:
        try:
            return checklist.walk([
                ("transport", self.check_transport), ("phone", self.check_phone),
                ("key", self.check_key), ("model", self.check_model),
                ("runner", self.check_runner), ("runner version", self.check_runner_version),
                ("thermal zones", self.check_thermal)])
        finally:
            if self.transport is not None:
                self.transport.close()

    @property
    def path(self) -> Path:
        return self.profile.path

    def _host_port(self) -> tuple[str, int] | None:
        host, _, port = (self.settings.address or "").rpartition(":")
        return (host, int(port)) if host and port.isdigit() else None

    def check_transport(self) -> checklist.Check:
        if self.settings.address:
            if self._host_port() is None:
                return checklist.missing("transport", f"ADB address {self.settings.address!r} in "
                                         f"{self.path} is not host:port",
                                         'write it as address = "192.168.1.20:5555" under [adb]')
            return checklist.ok("transport", f"TCP {self.settings.address}")
        ok, what, fix = adb_transport.usb_status()
        return checklist.ok("transport", what) if ok else checklist.missing("transport", what, fix)

    def check_phone(self) -> checklist.Check:
        if self.settings.address:
            host, port = self._host_port() or ("", 0)
            try:
                socket.create_connection((host, port), timeout=3.0).close()
            except OSError as e:
                return checklist.missing(
                    "phone", f"nothing answers at {self.settings.address} ({e.strerror or e})",
                    "on the phone turn on Wireless debugging, or run `adb tcpip 5555` once over "
                    f"USB; check the address in {self.path}")
            return checklist.ok("phone", f"adbd answers at {self.settings.address}")
        return self._usb_phone()

    def _usb_phone(self) -> checklist.Check:
        phones = adb_transport.find_usb_phones()
        if not phones:
            return checklist.missing(
                "phone", "no phone in USB debugging mode on USB",
                "plug it in with a data cable, unlock it and turn on Developer options > USB "
                "debugging (docs/phones.md)")
        usable = [p for p in phones if p.error is None]
        refused = [p for p in phones if p.error is not None]
        want = usb_serial(self.settings.serial)
        if want:
            if any(p.serial == want for p in usable):
                return checklist.ok("phone", f"USB phone {want}")
            if refused:  # perhaps the wanted one: it cannot be opened to read its serial
                return checklist.missing("phone", *refused[0].problem())
            return checklist.missing(
                "phone", f"no phone with serial {want} on USB (there: "
                f"{', '.join(p.serial or '?' for p in usable)})",
                f'set serial = "<one of those>" (or "auto") under [adb] in {self.path}')
        if not usable:
            return checklist.missing("phone", *refused[0].problem())
        more = (f"; {len(usable)} phones, the first is used (set serial under [adb] to choose)"
                if len(usable) > 1 else "")
        first = usable[0]
        return checklist.ok("phone", f"USB phone {first.serial or '(no serial)'} ({first.ids})"
                            f"{more}")

    def check_key(self) -> checklist.Check:
        t = AdbTransport.from_settings(self.settings, auth_timeout_s=self.auth_timeout_s,
                                       io_timeout_s=5.0, reconnects=0)
        key = Path(self.settings.adbkey).expanduser()
        try:
            t.connect()
        except UserError as e:
            if UNAUTHORIZED in str(e):
                return checklist.missing("key", f"{t.target}: {UNAUTHORIZED_WHAT} ({key})",
                                         UNAUTHORIZED_FIX)
            raise
        self.transport = t
        return checklist.ok("key", f"{key} accepted by {t.target}")

    def check_model(self) -> checklist.Check:
        t = self.transport
        assert t is not None
        self.props = parse_getprop(t.check(["getprop"], "getprop"))
        model = self.props.get("ro.product.model", "unknown")
        expect = self.settings.extra.get("expect_model")
        expects = [expect] if isinstance(expect, str) else list(expect or ())
        if expects and model not in expects:
            return checklist.missing("model", f"{self.path} is for {expects} but the phone at "
                                     f"{t.target} is a {model!r}",
                                     "use that phone's profile (or copy one and set expect_model)")
        return checklist.ok("model", f"{model} at {t.target}")

    def check_runner(self) -> checklist.Check:
        name, rt = self.profile.name, self.runtime
        if rt not in self.profile.runtimes:
            listed = ", ".join(self.profile.runtimes) or "no runtime"
            return checklist.missing("runner", f"cannot run {rt} artifacts: {self.path} lists "
                                     f"{listed}", f'add "{rt}" to runtimes = [...] in {self.path}')
        if rt == "executorch" and self.settings.runner == "minibench":
            t = self.transport
            assert t is not None
            r = t.run(["pm", "list", "packages", runners.MINIBENCH_PACKAGE])
            if f"package:{runners.MINIBENCH_PACKAGE}" not in r.stdout.split():
                return checklist.missing("runner", "ExecuTorch's benchmark app "
                                         f"({runners.MINIBENCH_PACKAGE}) is not on the phone",
                                         APP_MISSING_FIX)
            return checklist.ok("runner",
                                f"ExecuTorch's benchmark app ({runners.MINIBENCH_PACKAGE})")
        if rt == "executorch":
            tool = local_tool(self.profile, self.settings.runner)
            if tool is None or not tool.is_file():
                at = f" at {tool}" if tool else ""
                return checklist.missing("runner", f"no ExecuTorch runner binary for {name}{at}",
                                         RUNNER_MISSING_FIX.format(path=self.path))
            rebuild = "rebuild it for the phone with " + RUNNER_BUILD
        elif rt == "llamacpp":
            tool = local_tool(self.profile, self.settings.extra.get("llama_bench"))
            if tool is None or not tool.is_file():
                at = f" at {tool}" if tool else ""
                return checklist.missing("runner", f"no llama-bench for {name}{at}",
                                         LLAMA_BENCH_MISSING_FIX.format(path=self.path))
            rebuild = "rebuild llama-bench for it (`merino-mobile runner build --runtime llamacpp`)"
        elif rt == "onnxruntime":
            tool = local_tool(self.profile, self.settings.extra.get("onnxruntime_perf_test"))
            if tool is None or not tool.is_file():
                at = f" at {tool}" if tool else ""
                return checklist.missing("runner", f"no onnxruntime_perf_test for {name}{at}",
                                         ORT_MISSING_FIX.format(path=self.path))
            rebuild = "use onnxruntime_perf_test from an ONNX Runtime Android build for it"
        else:
            return checklist.missing("runner", f"phones run executorch, onnxruntime or llamacpp, "
                                     f"not {rt}",
                                     f"remove {rt!r} from runtimes = [...] in {self.path}")
        if not os.access(tool, os.X_OK):
            return checklist.missing("runner", f"{tool} is not executable", f"chmod +x {tool}")
        abi = checklist.elf_abi(tool)
        phone_abi = self.props.get("ro.product.cpu.abi", "unknown")
        abis = self.props.get("ro.product.cpu.abilist", phone_abi).split(",")
        if abi is not None and abi not in abis:
            return checklist.missing("runner", f"{tool} is built for {abi}, the phone runs "
                                     f"{phone_abi}", rebuild)
        self.tool = tool
        return checklist.ok("runner", f"{tool} ({abi or 'a script, not an ELF binary'})")

    def check_runner_version(self) -> checklist.Check:
        name = "runner version"
        if self.tool is None:
            return checklist.unknown(name, "ExecuTorch's benchmark app: its version is not checked")
        if self.runtime != "executorch":
            return checklist.unknown(name, f"{self.tool.name}: its version is not checked")
        from merino_mobile.device.host import runtime_version

        here = runtime_version("executorch")
        stamp = checklist.runner_stamp(self.tool)
        try:
            built = stamp.read_text().strip()
        except OSError:
            built = ""
        if not built:
            return checklist.unknown(
                name, f"{self.tool.name} records no ExecuTorch version (it was not built by "
                "`merino-mobile runner build`)", f"rebuild it with {RUNNER_BUILD} to have it "
                "checked")
        if here is None:
            return checklist.unknown(name, f"built from ExecuTorch {built}; ExecuTorch is not "
                                     "installed here to compare")
        if checklist.base_version(built) != checklist.base_version(here):
            return checklist.missing(name, f"the runner is built from ExecuTorch {built}, models "
                                     f"are exported with {here}",
                                     f"rebuild it from ExecuTorch v{checklist.base_version(here)} "
                                     f"sources with {RUNNER_BUILD}")
        return checklist.ok(name, f"ExecuTorch {built}, as the exporter ({here})")

    def check_thermal(self) -> checklist.Check:
        name = "thermal zones"
        t = self.transport
        assert t is not None
        temps = parse_thermal(t.run(["sh", "-c", THERMAL_SCRIPT]).stdout)
        watched = tuple(self.settings.extra.get("thermal_zones", ()))
        if not temps:
            what = "the phone reports no readable thermal zone under /sys/class/thermal"
            if self.profile.cooldown.max_temp_c is None:
                return checklist.unknown(name, what + "; temperatures are not recorded")
            return checklist.missing(name, what, "remove max_temp_c from [cooldown] in "
                                     f"{self.path} to measure without waiting for it to cool")
        kinds = {k.split("#")[0]: v for k, v in reversed(temps.items())}
        if watched:
            found = [z for z in watched if z in kinds]
            if not found:
                return checklist.missing(name, f"none of the thermal zones {list(watched)} of "
                                         f"{self.path} is on the phone",
                                         "set thermal_zones = [...] under [adb] to some of: "
                                         + ", ".join(sorted(kinds)))
            absent = [z for z in watched if z not in kinds]
            note = f" ({', '.join(absent)} not on this phone)" if absent else ""
            return checklist.ok(name, ", ".join(f"{z} {kinds[z]:g} °C" for z in found) + note)
        hottest = max(temps, key=temps.__getitem__)
        return checklist.ok(name, f"{len(temps)} zones, hottest {hottest} {temps[hottest]:g} °C")


def readiness(profile: DeviceProfile, runtime: str | None = None, *,
              auth_timeout_s: float | None = None) -> list[checklist.Check]:
    """What the phone needs to run `runtime` (default: the profile's first), in order: the
    transport (USB, or the TCP address), the phone visible, this computer's key accepted, the
    model the profile expects, the runner and its version, the thermal zones. Checks after the
    first missing one are not run. `auth_timeout_s` (default: the profile's, else 30 s) is how
    long the phone's user has to accept the key."""
    if profile.adb is None:
        return [checklist.missing("transport", f"{profile.path} has no [adb] table",
                                  'add [adb] with serial = "auto" (USB) or address = "host:port"')]
    return _PhoneWalk(profile, runtime, auth_timeout_s).run()


# -- backend entry points (merino_mobile.device.open_device / readiness / probe) ----------------

def open_device(profile: DeviceProfile) -> AndroidPhone:
    """The phone a profile describes; connects on first use."""
    return AndroidPhone(profile)


def probe(profile: DeviceProfile) -> Probe:
    """Ready now? The readiness walk with a short wait for the key; never raises."""
    return checklist.summarize(readiness(profile, auth_timeout_s=5.0), headline="model")
