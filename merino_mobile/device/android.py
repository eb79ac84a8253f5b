"""A phone as a device: what it says about itself, and how the profiler measures on it.

`AndroidPhone` is the profiler's view of a phone reached through an `AdbTransport`
(adb_transport.py; the phone knows nothing of sockets or USB): fingerprint from getprop and /sys,
artifacts and the runner pushed once under /data/local/tmp/merino-mobile/<sha256>/ and verified
with sha256sum on the phone, runs pinned with taskset to the big cores at a fixed thread count,
thermal cooldown before each batch with the temperatures recorded next to the timings. Three
runners: ExecuTorch's native executor_runner, ExecuTorch's benchmark app, onnxruntime_perf_test
(their command lines and output formats are in runners.py).

Also here: the parsers of what the phone reports (getprop, cpufreq, thermal zones) and the backend
entry points the device registry calls, `open_device(profile)` and `probe(profile)`. `DeviceGone`
(the phone went away mid-run) is raised by the transport and re-exported here for callers.
"""

from __future__ import annotations

import contextlib
import math
import posixpath
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merino_mobile.device import runners
from merino_mobile.device.adb_transport import AdbTransport, DeviceGone, reachable
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
           "probe"]

UNREADABLE = ("no timing of this run is used; rerun, and if the line repeats, rebuild the "
              "runner for this ExecuTorch/ONNX Runtime version or report the line")
RUNNER_MISSING = ("no ExecuTorch runner binary for {name}: build one with `merino-mobile runner "
                  "build --ndk DIR --executorch-src DIR` (docs/phones.md), or set "
                  "runner = \"PATH\" under [adb] in {path}")


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
        self.zones = tuple(settings.extra.get("thermal_zones", ()))
        self.session = posixpath.join(self.remote_dir, f"run-{secrets.token_hex(4)}")
        self._facts: PhoneFacts | None = None
        self._pushed: dict[str, str] = {}  # sha256 -> remote path
        self._bounds: dict[str, dict[str, list[tuple[int, ...] | None]]] = {}  # by .pte sha256
        self._made: list[str] = []
        self._outputs = Path(tempfile.mkdtemp(prefix=f"merino-{self.name}-"))

    def _local(self, value: Any) -> Path | None:
        if not value:
            return None
        p = Path(str(value)).expanduser()
        if not p.is_absolute():
            near = self.profile.path.parent / p
            p = near if near.exists() else p.resolve()
        return p

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
        tool = self.runner if runtime == "executorch" else self.ort_tool
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
                "onnxruntime": self.ort_tool is not None and self.ort_tool.exists()}
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
                                "build and install extension/benchmark/android/benchmark "
                                "(./gradlew installDebug), or build the native runner")
            return None
        tool = self.runner if runtime == "executorch" else self.ort_tool
        if tool is None or not tool.exists():
            if runtime == "executorch":
                raise UserError(RUNNER_MISSING.format(name=self.name, path=self.profile.path))
            raise UserError(f"no onnxruntime_perf_test for {self.name}: set "
                            f"onnxruntime_perf_test = \"PATH\" under [adb] in {self.profile.path}"
                            " (an arm64 build from ONNX Runtime's Android build)")
        return tool

    def prepare(self, artifact: Path) -> Handle:
        artifact = Path(artifact)
        runtime = {".pte": "executorch", ".onnx": "onnxruntime"}.get(artifact.suffix)
        if runtime is None:
            raise UserError(f"{artifact}: phones run .pte (ExecuTorch) or .onnx (ONNX Runtime)")
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


def _last_line(r: RunResult) -> str:
    lines = (r.stderr.strip() or r.stdout.strip()).splitlines()
    return lines[-1] if lines else "no output"


# -- backend entry points (merino_mobile.device.open_device / probe) ----------------------------

def open_device(profile: DeviceProfile) -> AndroidPhone:
    """The phone a profile describes; connects on first use."""
    return AndroidPhone(profile)


def probe(profile: DeviceProfile) -> Probe:
    """Reachable now? Connects, reads the model, disconnects. Never raises."""
    if profile.adb is None:
        return Probe(False, "no [adb] table in the profile")
    return reachable(profile.adb)
