"""The `host` device: this machine, with runtimes in a separate worker process.

Transport "local": commands are local processes and push/pull are file copies. Each benchmark
runs in a worker process of its own (`merino_mobile.device.worker`) with the profile's thread count
and CPU pinning; the worker reports every method as it starts and finishes, so when it dies
(signal, abort, non-zero exit) or hangs past `timeout_s`, the method it was running is recorded as
failed and a fresh worker continues with the rest.

Importing torch and the ExecuTorch runtime takes a worker 2 to 5 seconds, longer than most
benchmarks it runs. On Linux, ExecuTorch workers are therefore forked from one process that has
made those imports already (`ForkServer`, started on first use and kept for the life of this
process): each benchmark still gets a process of its own, started in a fraction of a second,
which loads its program and reports its own load time and peak memory as a fresh worker does.
Other runtimes, and other systems (forking a process that has loaded such libraries is not safe
on macOS), start `python -m merino_mobile.device.worker` afresh. (multiprocessing's forkserver
would do the forking, but it runs the caller's main script again in every child.)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import IO

from merino_mobile.device import checklist
from merino_mobile.device.base import (
    BenchRequest,
    BenchResult,
    EventHook,
    Fingerprint,
    Handle,
    MethodResult,
    Probe,
    RunResult,
    file_sha256,
)
from merino_mobile.device.checklist import Check
from merino_mobile.device.profiles import DeviceProfile
from merino_mobile.device.worker import RUNNERS
from merino_mobile.errors import UserError
from merino_mobile.formats import RUNTIMES as KNOWN_RUNTIMES
from merino_mobile.formats import for_artifact

RUNTIMES = tuple(r for r in KNOWN_RUNTIMES if r in RUNNERS)  # what this host's worker runs
RUNTIME_PACKAGE = {"executorch": "executorch", "onnxruntime": "onnxruntime",
                   "llamacpp": "llama-cpp-python"}
# installing llama-cpp-python builds llama.cpp with this machine's compiler
INSTALL_NOTE = {"llamacpp": " (it compiles llama.cpp from source: several minutes)"}
# Importing torch and a runtime takes seconds, more on a loaded machine; only a worker that has
# not said "ready" by then is stuck. Methods get the request's own timeout_s.
STARTUP_TIMEOUT_S = 180.0
# the runtimes whose workers are forked from a process that has imported them (module docstring)
FORKED_RUNTIMES = ("executorch",) if sys.platform == "linux" else ()


class LocalTransport:
    """Commands are local processes; push and pull copy files."""

    def run(self, argv: Sequence[str], timeout: float | None = None,
            stdin: str | None = None) -> RunResult:
        try:
            p = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return RunResult(-signal.SIGKILL, _text(e.stdout), _text(e.stderr), timed_out=True)
        return RunResult(p.returncode, p.stdout, p.stderr)

    def push(self, local: Path, remote: str) -> None:
        dest = Path(remote)
        if dest.resolve() != Path(local).resolve():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, dest)
            if file_sha256(dest) != file_sha256(Path(local)):
                raise UserError(f"copying {local} to {dest} did not verify (disk full?)")

    def pull(self, remote: str, local: Path) -> None:
        self.push(Path(remote), str(local))

    def close(self) -> None:
        pass


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode(errors="replace")


def install_command(runtime: str) -> str:
    """The command that installs a runtime this host runs."""
    return f"pip install {RUNTIME_PACKAGE[runtime]}{INSTALL_NOTE.get(runtime, '')}"


def runtime_version(runtime: str) -> str | None:
    """Installed version of a runtime's Python package, None when it is not installed."""
    try:
        return importlib.metadata.version(RUNTIME_PACKAGE[runtime])
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine_model() -> str:
    for p in ("/sys/class/dmi/id/product_name", "/sys/firmware/devicetree/base/model"):
        try:
            text = Path(p).read_text().strip("\x00\n ")
            if text:
                return text
        except OSError:
            continue
    return f"{platform.system()} {platform.machine()} host"


class HostDevice:
    """This machine as a device (see the module docstring)."""

    replicates = True  # the worker loads a method once per MethodSpec.instances
    # runtimes whose workers are forked (module docstring); () starts every worker afresh
    forked_runtimes: tuple[str, ...] = FORKED_RUNTIMES

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self.name = profile.name
        self.transport = LocalTransport()

    def fingerprint(self, runtime: str, quant: str) -> Fingerprint:
        return Fingerprint(
            device=self.name, model=_machine_model(), cpu=_cpu_model(),
            cores=os.cpu_count() or 1, os=f"{platform.system()} {platform.release()}",
            abi=platform.machine(), runtime=runtime,
            runtime_version=runtime_version(runtime) or "not installed",
            threads=self.profile.threads, quant=quant, cpus=self.cpus,
            date=date.today().isoformat(),
        )

    @property
    def cpus(self) -> tuple[int, ...]:
        """Pinned cores: the profile's, limited to the ones this process may use."""
        if not self.profile.cpus:
            return ()
        allowed = os.sched_getaffinity(0)
        missing = [c for c in self.profile.cpus if c not in allowed]
        if missing:
            raise UserError(f"{self.profile.path}: cpus {missing} are not available on this host "
                            f"(usable: {sorted(allowed)}); edit cpus = [...] in the profile")
        return tuple(self.profile.cpus)

    def runtimes(self) -> list[str]:
        return [r for r in self.profile.runtimes if r in RUNTIMES and runtime_version(r)]

    def prepare(self, artifact: Path) -> Handle:
        """A .pte, an .onnx, a folder of .onnx files (one method each, named by file stem), or a
        .gguf (checked against the card.json beside it: a GGUF of another card is refused)."""
        artifact = Path(artifact)
        if artifact.is_dir() and any(artifact.glob("*.onnx")):
            runtime = "onnxruntime"  # a profile's program: one .onnx file per method
        else:
            runtime = for_artifact(artifact).runtime
        if runtime not in RUNTIMES:
            raise UserError(f"{artifact}: this host runs {', '.join(RUNTIMES)} artifacts, not "
                            f"{runtime}")
        if not artifact.exists():
            raise UserError(f"{artifact}: no such file")
        if runtime == "llamacpp":
            from merino_mobile.export.gguf import check_artifact

            check_artifact(artifact)
        files = sorted(artifact.glob("*.onnx")) if artifact.is_dir() else [artifact]
        digest = hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()
        # The worker reads the file in place: on the host there is nothing to push.
        return Handle(artifact, str(artifact.resolve()), runtime, digest,
                      sum(f.stat().st_size for f in files))

    def benchmark(self, handle: Handle, request: BenchRequest,
                  on_event: EventHook | None = None) -> BenchResult:
        if request.runtime != handle.runtime:
            raise UserError(f"{handle.local} is a {handle.runtime} artifact, the request asks for "
                            f"{request.runtime}")
        t0 = time.perf_counter()
        results: dict[str, MethodResult] = {}
        pending = list(request.methods)
        threads = self.profile.threads
        while pending:
            req = BenchRequest(**{**request.__dict__, "methods": tuple(pending)})
            done, threads = self._run_worker(handle, req, on_event)
            results.update({r.name: r for r in done})
            pending = [m for m in pending if m.name not in results]
        ordered = tuple(results[m.name] for m in request.methods)
        return BenchResult(ordered, threads, self.cpus, time.perf_counter() - t0)

    def _run_worker(self, handle: Handle, request: BenchRequest,
                    on_event: EventHook | None) -> tuple[list[MethodResult], int]:
        """One worker process; returns what it finished (at least one result: callers progress)."""
        job = {"artifact": handle.remote, "threads": self.profile.threads, "cpus": list(self.cpus),
               "request": request.to_json()}
        with tempfile.TemporaryFile() as errf:
            proc = (_ForkedWorker(job, errf) if request.runtime in self.forked_runtimes
                    else _FreshWorker(job, errf))
            lines = proc.lines
            out: list[MethodResult] = []
            running: str | None = None
            threads = self.profile.threads
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            timed_out = False
            try:
                while True:
                    try:
                        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        timed_out = True
                        proc.kill()
                        break
                    if line is None:
                        break
                    try:
                        ev = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a runtime printing to stdout; not ours
                    kind = ev.get("event")
                    if kind == "ready":
                        threads = int(ev.get("threads", threads))
                        deadline = time.monotonic() + request.timeout_s
                    elif kind == "start":
                        running = ev["method"]
                        deadline = time.monotonic() + request.timeout_s
                        if on_event:
                            on_event(kind, running, proc.pid)
                    elif kind in ("done", "failed"):
                        out.append(MethodResult(ev["method"], tuple(ev.get("samples_ms") or ()),
                                                ev.get("error"), ev.get("load_ms"),
                                                ev.get("peak_rss_bytes")))
                        running = None
                        if on_event:
                            on_event(kind, ev["method"], proc.pid, out[-1])
            except BaseException:
                # a hook that raises (say, a full disk while storing a point) must not leave
                # the runtime running without a parent
                proc.kill()
                proc.wait()
                raise
            rc = proc.wait()
            tail = proc.tail(rc)
        if timed_out:
            why = f"timed out after {request.timeout_s if running else STARTUP_TIMEOUT_S:g}s"
        elif rc is None:
            why = " | ".join(tail)
        elif rc < 0:
            why = f"runtime worker killed by {signal.Signals(-rc).name}"
        elif rc != 0:
            why = f"runtime worker exited with code {rc}: {' | '.join(tail)}"
        else:
            why = "runtime worker stopped early"
        finished = {r.name for r in out}
        unfinished = [m.name for m in request.methods if m.name not in finished]
        if running is not None:
            out.append(MethodResult(running, (), f"{why} while running {running}"))
            if on_event:
                on_event("failed", running, proc.pid, out[-1])
        elif unfinished:
            # Died before starting a method (bad artifact, missing runtime): retrying would only
            # fail the same way, so every remaining method carries the reason.
            for n in unfinished:
                out.append(MethodResult(n, (), why))
                if on_event:
                    on_event("failed", n, proc.pid, out[-1])
        return out, threads

    def cleanup(self) -> None:
        self.transport.close()


class _FreshWorker:
    """`python -m merino_mobile.device.worker`: the job on stdin, event lines from stdout into
    `lines` (None at the end), stderr into `errf`."""

    def __init__(self, job: dict, errf: IO[bytes]) -> None:
        self.errf = errf
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "merino_mobile.device.worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=errf, text=True, start_new_session=True)
        self.pid = self.proc.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(job))
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def kill(self) -> None:
        os.killpg(self.pid, signal.SIGKILL)  # the worker leads its own session

    def wait(self) -> int | None:
        return self.proc.wait()

    def tail(self, rc: int | None) -> list[str]:
        return _tail(self.errf)


class ForkServer:
    """`worker.serve_forks` for one runtime: a process that has imported it once and forks one
    worker per job. `fork_server` keeps one per runtime for the life of this process."""

    def __init__(self, runtime: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # its own messages (why it stopped, if it does), for as long as it runs
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "merino_mobile.device.worker", "--forks",
             str(theirs.fileno()), runtime], pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True)
        theirs.close()
        self.sock = ours
        self.lock = threading.Lock()

    def fork(self, job: dict, output: int) -> tuple[int, int]:
        """Send a job; returns the read ends of its (events, status) pipes (worker.serve_forks).
        Both end at once when this server has stopped."""
        events_r, events_w = os.pipe()
        status_r, status_w = os.pipe()
        # the job in a file of its own: a message on the socket has a size limit, a file not
        with tempfile.TemporaryFile() as job_file:
            job_file.write(json.dumps(job).encode())
            job_file.flush()
            job_file.seek(0)
            try:
                with self.lock:
                    socket.send_fds(self.sock, [b"job"],
                                    [job_file.fileno(), events_w, output, status_w])
            except OSError:
                pass  # it has stopped: the pipes' ends close below, and the caller reads why
            finally:
                os.close(events_w)
                os.close(status_w)
        return events_r, status_r

    def tail(self) -> list[str]:
        self.log.seek(0)
        return self.log.read().decode(errors="replace").strip().splitlines()[-3:]


_fork_servers: dict[str, ForkServer] = {}
_fork_servers_lock = threading.Lock()


def fork_server(runtime: str) -> ForkServer:
    """This process's fork server for `runtime`, started anew when there is none running."""
    with _fork_servers_lock:
        server = _fork_servers.get(runtime)
        if server is None or server.proc.poll() is not None:
            server = _fork_servers[runtime] = ForkServer(runtime)
        return server


class _ForkedWorker:
    """A worker forked by the runtime's `ForkServer`: the same event lines come over a pipe into
    `lines`; its stdout and stderr go to `output`."""

    def __init__(self, job: dict, output: IO[bytes]) -> None:
        self.server = fork_server(job["request"]["runtime"])
        self.output = output
        job = {**job, "cwd": os.getcwd(), "env": dict(os.environ)}
        events, status = self.server.fork(job, output.fileno())
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.status: list[int] = []  # the server writes the pid, then the exit status
        self.forked = threading.Event()
        self.reported = threading.Thread(target=self._read_status, args=(status,), daemon=True)
        self.reported.start()
        threading.Thread(target=self._read_events, args=(events,), daemon=True).start()

    def _read_events(self, fd: int) -> None:
        with open(fd, encoding="utf-8", errors="replace") as f:
            for line in f:
                self.lines.put(line)
        self.lines.put(None)

    def _read_status(self, fd: int) -> None:
        with open(fd) as f:
            for line in f:
                self.status.append(int(line))
                self.forked.set()
        self.forked.set()

    @property
    def pid(self) -> int:
        """The worker's pid (-1 when the server stopped before forking it). The server writes it
        before the worker can report anything, so a caller that has a report does not wait."""
        self.forked.wait()
        return self.status[0] if self.status else -1

    def kill(self) -> None:
        if not self.forked.is_set() or not self.status:
            self.server.proc.kill()  # stuck before forking: in its own start-up
            return
        if len(self.status) > 1:
            return  # exited and reaped already: the pid may be another process's by now
        try:
            os.killpg(self.pid, signal.SIGKILL)  # its session, once it has made one
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> int | None:
        """Its exit status; None when the server stopped without reporting one."""
        self.reported.join()
        return self.status[1] if len(self.status) > 1 else None

    def tail(self, rc: int | None) -> list[str]:
        if rc is None:
            return ["the runtime's fork server stopped", *self.server.tail()]
        return _tail(self.output)


def _tail(f: IO[bytes]) -> list[str]:
    f.seek(0)
    return f.read().decode(errors="replace").strip().splitlines()[-3:]


def open_device(profile: DeviceProfile) -> HostDevice:
    """The host backend's entry point (see base.py)."""
    return HostDevice(profile)


def readiness(profile: DeviceProfile, runtime: str | None = None) -> list[Check]:
    """This host needs only its runtimes (`runtime`, else any the profile lists) installed, and
    the cores the profile pins to."""
    dev = HostDevice(profile)

    def runtimes() -> Check:
        have = dev.runtimes()
        if (runtime is not None and runtime not in have and runtime in profile.runtimes
                and runtime in RUNTIMES):
            return checklist.missing(
                "runtimes", f"cannot run {runtime} artifacts: {RUNTIME_PACKAGE[runtime]} is not "
                f"installed (runtimes of {profile.path})", install_command(runtime))
        if runtime is not None and runtime not in have:
            from merino_mobile.formats import for_runtime

            return checklist.missing(
                "runtimes", f"cannot run {runtime} artifacts: it has "
                f"{', '.join(have) or 'no runtime'} (see {profile.path})",
                f"export for one of those with --format "
                f"{' or '.join(for_runtime(r).name for r in have)}" if have else
                install_command(runtime) if runtime in RUNTIME_PACKAGE else
                f"pip install {runtime}")
        if not have:
            wanted = [r for r in profile.runtimes if r in RUNTIME_PACKAGE]
            return checklist.missing(
                "runtimes", f"none of the runtimes {list(profile.runtimes)} is installed",
                f"pip install {' '.join(RUNTIME_PACKAGE[r] for r in wanted)}"
                f"{''.join(sorted({INSTALL_NOTE.get(r, '') for r in wanted}))}" if wanted
                else f"list executorch or onnxruntime in runtimes = [...] of {profile.path}")
        versions = ", ".join(f"{r} {runtime_version(r)}" for r in have)
        return checklist.ok("runtimes", f"{_cpu_model()}, {os.cpu_count()} cores; {versions}")

    def cpus() -> Check:
        pinned = dev.cpus  # a UserError naming the usable cores when some are not
        return checklist.ok("cpus", f"pinned to {','.join(map(str, pinned))}" if pinned
                            else "not pinned")

    return checklist.walk([("runtimes", runtimes), ("cpus", cpus)])


def probe(profile: DeviceProfile) -> Probe:
    """Ready now? The detail names the host and its runtimes."""
    return checklist.summarize(readiness(profile), headline="runtimes")
