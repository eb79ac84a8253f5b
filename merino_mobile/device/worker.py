"""The process that runs a runtime for the host device: `python -m merino_mobile.device.worker`.

It reads one JSON job on stdin ({"artifact", "threads", "cpus", "request"}; the request is a
`base.BenchRequest` of a runtime in RUNNERS: executorch, onnxruntime or llamacpp), pins itself to
`cpus`, fixes the runtime's thread count, and times each method under the shared stopping rule
(a method with `instances` > 1 is loaded that many times and the copies are called in turn, one
call per sample). It writes one JSON object per line on stdout, flushed at once:

    {"event": "ready", "pid": 123, "threads": 2, "cpus": [0, 1]}
    {"event": "start", "method": "m0"}
    {"event": "done", "method": "m0", "samples_ms": [...]}     or
    {"event": "failed", "method": "m0", "error": "..."}          (an exception, reported cleanly)

Running in its own process is the point: a segfault, an abort or a leak in a runtime kills only
this worker; the parent (`host.HostDevice`) sees which method was running and records it as failed.

`serve_forks` starts the same worker another way: forked from a process that has made the
runtime's start-up imports already, each worker gets its job from that process and sends the
same lines over a pipe, with its stdout and stderr going to a file.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from merino_mobile.device.base import BenchRequest, InputSpec, MethodSpec, Samples
from merino_mobile.errors import UserError


def stdout_line(line: str) -> None:
    """The worker's channel when it is a process of its own: one line on stdout, flushed."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def make_inputs(specs: tuple[InputSpec, ...], torch_tensors: bool = False) -> list[Any]:
    """Input arrays of a method (numpy; torch tensors for ExecuTorch), the same on every run."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for s in specs:
        dtype = {"float32": np.float32, "int64": np.int64, "bool": np.bool_}[s.dtype]
        if s.fill == "randn":
            a = rng.standard_normal(s.shape).astype(dtype)
        elif s.fill == "zeros":
            a = np.zeros(s.shape, dtype)
        elif s.fill == "arange":
            a = np.arange(int(np.prod(s.shape))).reshape(s.shape).astype(dtype)
        else:
            a = np.full(s.shape, int(s.fill), dtype)
        out.append(a)
    if torch_tensors:
        import torch

        out = [torch.from_numpy(a) for a in out]
    return out


def time_calls(calls: Sequence[Any], request: BenchRequest) -> list[float]:
    """Samples (ms) of calls made in turn, one call per sample, after `warmup` rounds of all."""
    for _ in range(request.warmup):
        for call in calls:
            call()
    samples = Samples(request)
    i = 0
    while True:
        call = calls[i % len(calls)]
        i += 1
        t0 = time.perf_counter_ns()
        call()
        if samples.add((time.perf_counter_ns() - t0) / 1e6):
            return samples.values


class ExecutorchRunner:
    @staticmethod
    def start() -> None:
        """Process start-up, before any load is timed: the kernels a program may use (a 4-bit
        embedding, the LLM attention ops; no method that uses them loads without). A runner on
        a phone has them linked in."""
        from merino_mobile.export.executorch import load_llm_kernels

        load_llm_kernels()

    def __init__(self, artifact: str, threads: int) -> None:
        import torch  # noqa: F401  (loads libtorch, which the extension links against)

        # The compiled extension is the runtime `executorch.runtime` wraps; importing it directly
        # skips `executorch.exir` (the exporter), which takes most of a worker's start-up time.
        from executorch.extension.pybindings import _C

        # The XNNPACK delegate shares this process-wide threadpool; resetting it fixes the count.
        _C._unsafe_reset_threadpool(threads)
        self.threads = _C._threadpool_get_thread_count()
        self.artifact = artifact
        self.program = _C._load_program(artifact)
        self.names = {self.program.get_method_name(i) for i in range(self.program.num_methods())}

    def callers(self, spec: MethodSpec) -> list[Any]:
        """One call per instance. Methods loaded from one program share their packed weights
        (measured: as fast as one method called again), so every further instance comes from
        its own load of the program (about 15 MB each, the weights are memory-mapped)."""
        from executorch.extension.pybindings import _C

        if spec.name not in self.names:
            raise ValueError(f"the program has no method {spec.name!r} (it has "
                             f"{sorted(self.names)})")
        inputs = make_inputs(spec.inputs, torch_tensors=True)
        programs = [self.program] + [_C._load_program(self.artifact)
                                     for _ in range(spec.instances - 1)]
        methods = [prog.load_method(spec.name) for prog in programs]
        # Outputs are not cloned: a runner on a phone does not copy them either.
        return [lambda m=m: m.call(inputs, clone_outputs=False) for m in methods]


class OnnxRunner:
    """An .onnx file (method "forward"), or a folder of them: one method per file stem."""

    def __init__(self, artifact: str, threads: int) -> None:
        import onnxruntime as ort

        self.opts = ort.SessionOptions()
        self.opts.intra_op_num_threads = threads
        self.opts.inter_op_num_threads = 1
        self.opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.opts.log_severity_level = 3
        self.threads = threads
        path = Path(artifact)
        self.files = ({f.stem: f for f in sorted(path.glob("*.onnx"))} if path.is_dir()
                      else {"forward": path})

    def callers(self, spec: MethodSpec) -> list[Any]:
        """One call per instance: a session each (sessions never share their weights)."""
        import numpy as np
        import onnxruntime as ort

        if spec.name not in self.files:
            raise ValueError(f"no model {spec.name!r} (have {sorted(self.files)})")
        sessions = [ort.InferenceSession(str(self.files[spec.name]), self.opts,
                                         providers=["CPUExecutionProvider"])
                    for _ in range(spec.instances)]
        session = sessions[0]
        declared = session.get_inputs()
        if len(declared) < len(spec.inputs):
            raise ValueError(f"the model takes {len(declared)} inputs, the request gives "
                             f"{len(spec.inputs)}")
        feeds = {d.name: a for d, a in zip(declared, make_inputs(spec.inputs), strict=False)}
        # inputs beyond the request's are the KV cache ONNX passes in (past.*): zeros
        for d in declared[len(spec.inputs):]:
            if not all(isinstance(n, int) for n in d.shape):
                raise ValueError(f"input {d.name} has a dynamic shape {d.shape}; give it")
            dtype = np.int64 if "int64" in d.type else np.float32
            feeds[d.name] = np.zeros(d.shape, dtype)
        return [lambda s=s: s.run(None, feeds) for s in sessions]


class LlamaCppRunner:
    """A .gguf file run by llama.cpp through llama-cpp-python: one method, "forward", with the
    inputs of the exported decoders (tokens [1, T], start [1]).

    llama.cpp keeps its own KV cache and only takes the next position of a sequence, so a call
    at `start` > 0 first fills the cache with `start` tokens (untimed, once per method: as a
    generation would have reached that position) and each timed call then decodes the T tokens
    at start .. start+T-1 after dropping what an earlier call cached there. Only the last
    token's logits are computed, as a generating app asks for them. The context (KV cells) is
    the export's cache length, recorded in the file (`merino.cache_len`).
    """

    def __init__(self, artifact: str, threads: int) -> None:
        from merino_mobile.export.gguf import load_llama

        self.llm = load_llama(Path(artifact), threads=threads)
        self.threads = threads
        self.fill_ms = 0.0  # the last `callers` call's cache fill: set-up, not load

    def callers(self, spec: MethodSpec) -> list[Any]:
        """The one call of `spec` (llama.cpp runs a model once per process: instances 1)."""
        if spec.name != "forward":
            raise ValueError(f"a GGUF has one method, 'forward', not {spec.name!r}")
        if spec.instances != 1:
            raise ValueError(f"llama.cpp runs one copy of a model here, not {spec.instances}")
        if len(spec.inputs) != 2:
            raise ValueError(f"forward takes (tokens [1, T], start [1]), the request gives "
                             f"{len(spec.inputs)} inputs")
        tokens, start = make_inputs(spec.inputs)
        batch = [int(t) for t in tokens.reshape(-1)]
        pos = int(start.reshape(-1)[0])
        llm = self.llm
        if pos < 0 or not batch or pos + len(batch) > llm.n_ctx():
            raise ValueError(f"{len(batch)} tokens at position {pos} do not fit the model's "
                             f"{llm.n_ctx()} KV cells")
        t0 = time.perf_counter()
        llm.reset()
        if pos:
            llm.eval([batch[0]] * pos)
        self.fill_ms = (time.perf_counter() - t0) * 1e3

        def call() -> None:
            llm.n_tokens = pos  # eval drops the cells from n_tokens on, then decodes the batch
            llm.eval(batch)

        return [call]


# the runtimes this worker runs, and what each imports at process start-up
RUNNERS: dict[str, Any] = {"executorch": ExecutorchRunner, "onnxruntime": OnnxRunner,
                           "llamacpp": LlamaCppRunner}
STARTUP_IMPORTS = {"executorch": ("torch", "executorch.extension.pybindings._C",
                                   "executorch.kernels.quantized",
                                   "merino_mobile.export.executorch"),
                   "onnxruntime": ("onnxruntime",), "llamacpp": ("llama_cpp",)}
# Set before the runtime loads, unless the environment sets them. llama.cpp's threads meet at an
# OpenMP barrier after every op; when the scheduler puts two of them on one core (a host with no
# core to spare), a spinning waiter holds that core until its time slice ends, at every barrier,
# for the life of the process. Passive waiting costs a futex wake per barrier instead: a little
# slower on idle cores, never stuck (docs/deploy.md has the numbers).
STARTUP_ENV = {"llamacpp": {"OMP_WAIT_POLICY": "PASSIVE"}}


def main(argv: Sequence[str] = ()) -> int:
    if argv[:1] == ["--forks"]:
        return serve_forks(int(argv[1]), argv[2])
    return run(json.loads(sys.stdin.read()), stdout_line)


def serve_forks(sock_fd: int, runtime: str) -> int:
    """Make `runtime`'s start-up imports once, then fork one worker per job (`python -m
    merino_mobile.device.worker --forks FD RUNTIME`; the client is `host.ForkServer`).

    Each job arrives on the SOCK_SEQPACKET socket `sock_fd` as one message with four file
    descriptors, (job, events, output, status): `job` is a file holding the job's JSON. The
    worker sends its lines to `events`, its stdout and stderr go to `output`, and this process
    writes the worker's pid, then its exit status (negative: the signal that killed it) to
    `status`, one line each. The job also carries the caller's working directory and
    environment: this process keeps its own from when it started. It ends when the caller
    closes its end of the socket.
    """
    import selectors
    import signal
    import socket

    for module in STARTUP_IMPORTS[runtime]:
        importlib.import_module(module)
    getattr(RUNNERS[runtime], "start", lambda: None)()
    sock = socket.socket(fileno=sock_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wake-up fd is written
    signal.set_wakeup_fd(wake_w)
    status: dict[int, int] = {}  # worker pid -> its status pipe
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while True:
        ready = {key.fileobj for key, _ in sel.select()}
        if wake_r in ready:
            while True:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    break
            while status:
                pid, st = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                fd = status.pop(pid, None)
                if fd is not None:
                    _write_line(fd, str(os.waitstatus_to_exitcode(st)))
                    os.close(fd)
        if sock in ready:
            msg, fds, _, _ = socket.recv_fds(sock, 64, 4)
            if not msg:
                return 0  # the caller is gone
            job_fd, events, output, status_fd = fds
            sys.stdout.flush()  # nothing of ours in the worker's output
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                try:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    for fd in (sock_fd, wake_r, wake_w, status_fd, *status.values()):
                        os.close(fd)
                    _forked_worker(job_fd, events, output)
                finally:
                    os._exit(1)  # the worker never returns into this loop
            for fd in (job_fd, events, output):
                os.close(fd)
            _write_line(status_fd, str(pid))
            status[pid] = status_fd


def _write_line(fd: int, text: str) -> None:
    with contextlib.suppress(OSError):  # the caller stopped waiting
        os.write(fd, (text + "\n").encode())


def _forked_worker(job_fd: int, events: int, output: int) -> None:
    """The worker's life in a forked process: `run` the job, then exit with its code."""
    import traceback

    rc = 1
    try:
        os.setsid()  # a process group of its own, as a fresh worker has: killed as one
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        with os.fdopen(job_fd, "rb") as f:
            job = json.loads(f.read())
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        with os.fdopen(events, "w") as out:

            def send(line: str) -> None:
                out.write(line + "\n")
                out.flush()

            rc = run(job, send)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def run(job: dict[str, Any], send: Callable[[str], None]) -> int:
    """Time the job's methods, sending one JSON line per event (module docstring)."""

    def emit(**event: Any) -> None:
        send(json.dumps(event))

    cpus = job.get("cpus") or []
    if cpus:
        # Pin before the runtime starts its threads so they inherit the mask.
        os.sched_setaffinity(0, cpus)
    request = BenchRequest.from_json(job["request"])
    runner_cls = RUNNERS[request.runtime]
    for key, value in STARTUP_ENV.get(request.runtime, {}).items():
        os.environ.setdefault(key, value)
    # importing the runtime is process start-up, not model load: done before the load is timed
    for module in STARTUP_IMPORTS[request.runtime]:
        importlib.import_module(module)
    getattr(runner_cls, "start", lambda: None)()
    t0 = time.perf_counter()
    try:
        runner = runner_cls(job["artifact"], int(job["threads"]))
    except UserError as e:
        # an artifact this runtime refuses: one line for the parent to report, no traceback
        sys.stderr.write(f"{e}\n")
        return 2
    # the first method's load time includes the program's, as a cold start in an app would
    program_ms = (time.perf_counter() - t0) * 1e3
    emit(event="ready", pid=os.getpid(), threads=runner.threads,
         cpus=sorted(os.sched_getaffinity(0)))
    for spec in request.methods:
        emit(event="start", method=spec.name)
        try:
            t0 = time.perf_counter()
            calls = runner.callers(spec)
            # several instances: the load time of one; a cache fill is set-up, not load
            load_ms = (program_ms + (time.perf_counter() - t0) * 1e3 / len(calls)
                       - getattr(runner, "fill_ms", 0.0))
            program_ms = 0.0
            samples = time_calls(calls, request)
        except Exception as e:  # a runtime error in one method must not stop the others
            emit(event="failed", method=spec.name, error=f"{type(e).__name__}: {e}".strip())
            continue
        emit(event="done", method=spec.name, samples_ms=samples, load_ms=load_ms,
             peak_rss_bytes=peak_rss_bytes())
    return 0


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark.

    On Linux, VmHWM of /proc/self/status: ru_maxrss keeps the high-water mark of the process that
    forked us across exec, so a worker started by a deploy that had just exported a large model
    reported that process's gigabytes, not its own. Elsewhere ru_maxrss (bytes on macOS).
    """
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
