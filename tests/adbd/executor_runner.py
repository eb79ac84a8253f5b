#!/usr/bin/env python3
"""A host stand-in for ExecuTorch's executor_runner (examples/portable/executor_runner).

Pushed to the loopback adbd in place of the arm64 binary a phone would run. Same gflags-style
flags (--model_path, --inputs, --output_file, --print_output, --num_executions, --method_name,
--cpu_threads; --etdump_path writes only when given), same log lines on stderr in the posix PAL
format (`I 00:00:00.012345 executorch:executor_runner.cpp:NN] ...`), same `OutputX i: ...` lines on
stdout and `<output_file>-<i>.bin` files. The .pte really runs: it is loaded and executed by
ExecuTorch's C++ runtime through its Python extension (`executorch.extension.pybindings._C`, the
module executorch.runtime wraps; imported directly because executorch.runtime also imports the
exporter, which takes many seconds on this shared machine).

Importing torch and the runtime still takes seconds, where the native runner starts in
milliseconds. So the fixture can keep one warm process (`--serve SOCKET`, started by
`WarmRunner`): a run then hands its argv, working directory and stdin/stdout/stderr file
descriptors to it, and the warm process forks a child that runs main() on those descriptors and
reports the exit status. Output, files and exit codes are the same as a standalone run; without
$MERINO_FAKE_RUNNER_SOCKET (or if it does not answer) the runner simply runs in-process.
"""

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time

T0 = time.monotonic()
FLAGS = {"model_path": "model.pte", "data_path": "", "inputs": "", "input_shapes": "",
         "output_file": "", "server_mode": "false", "print_output": "summary",
         "num_executions": "1", "method_name": "", "cpu_threads": "-1",
         "etdump_path": ""}
BOOL_FLAGS = {"server_mode"}


def log(level: str, line: int, message: str) -> None:
    us = int((time.monotonic() - T0) * 1e6)
    sec, us = divmod(us, 1_000_000)
    minute, sec = divmod(sec, 60)
    hour, minute = divmod(minute, 60)
    sys.stderr.write(f"{level} {hour:02d}:{minute:02d}:{sec:02d}.{us:06d} "
                     f"executorch:executor_runner.cpp:{line}] {message}\n")
    sys.stderr.flush()


def parse_flags(argv: list[str]) -> dict:
    flags, rest, i = dict(FLAGS), [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            rest.append(arg)
            i += 1
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name not in flags and name.startswith("no") and name[2:] in BOOL_FLAGS:
            name, value, eq = name[2:], "false", "="
        if name not in flags:
            sys.stderr.write(f"ERROR: unknown command line flag '{name}'\n")
            sys.exit(1)
        if not eq:
            if name in BOOL_FLAGS:
                value = "true"
            else:
                i += 1
                if i >= len(argv):
                    sys.stderr.write(f"ERROR: flag '--{name}' is missing its argument\n")
                    sys.exit(1)
                value = argv[i]
        flags[name] = value
        i += 1
    if rest:
        log("E", 333, "Extra commandline args: " + " ".join(rest))
        sys.exit(1)
    return flags


def fail(line: int, message: str) -> None:
    """ET_CHECK_MSG: log at Fatal level and abort, as the C++ runner does."""
    log("F", line, message)
    sys.stderr.flush()
    os.abort()


def main() -> int:
    flags = parse_flags(sys.argv[1:])
    if flags["print_output"] not in ("none", "summary", "all"):
        log("E", 343, f"Unknown --print_output mode '{flags['print_output']}'. "
            "Expected 'none', 'summary', or 'all'.")
        return 1
    import torch

    from merino_mobile.export.executorch import load_llm_kernels

    load_llm_kernels()  # quantized and LLM kernels: the phone's runner links them too
    from executorch.extension.pybindings import _C

    threads = int(flags["cpu_threads"])
    n_threads = threads if threads > 0 else max(1, (os.cpu_count() or 2) // 2)
    log("I", 362, f"Resetting threadpool with num threads = {n_threads}")
    _C._unsafe_reset_threadpool(n_threads)
    torch.set_num_threads(n_threads)

    path = flags["model_path"]
    if not os.path.isfile(path):
        fail(447, "FileDataLoader::from() failed: 0x22")
    before_load = time.monotonic()
    try:
        program = _C._load_program(path, enable_etdump=bool(flags["etdump_path"]))
    except Exception:
        log("E", 461, f"Failed to parse model file {path}")
        return 1
    log("I", 464, f"Model file {path} is loaded.")
    method_name = flags["method_name"] or program.get_method_name(0)
    log("I", 474, f"Using method {method_name}")
    try:
        method = program.load_method(method_name)
    except Exception:
        fail(576, f"Loading of method {method_name} failed with status 0x12")
    log("I", 590, f"Model loaded in {(time.monotonic() - before_load) * 1e3:f} ms.")

    meta = method.method_meta()
    files = [f for f in flags["inputs"].split(",") if f] if flags["inputs"] else []
    if files:
        log("I", 409, "Loading inputs from input file(s).")
    specs = flags["input_shapes"].split(",") if flags["input_shapes"] else []
    if specs and len(specs) != meta.num_inputs():
        fail(291, f"--input_shapes has {len(specs)} entries but the method has "
             f"{meta.num_inputs()} inputs; pass one entry per input and leave an entry empty to "
             "skip it")
    inputs = []
    for i in range(meta.num_inputs()):
        info = meta.input_tensor_meta(i)
        dtype = {6: torch.float32, 4: torch.int64, 3: torch.int32, 1: torch.int8,
                 11: torch.bool, 5: torch.float16}.get(info.dtype(), torch.float32)
        bound = tuple(info.sizes())
        shape = tuple(int(d) for d in specs[i].split("x")) if specs and specs[i] else bound
        if i < len(files):
            with open(files[i], "rb") as fh:
                raw = bytearray(fh.read())
            if len(raw) != info.nbytes():
                fail(150, f"input size ({len(raw)}) and tensor size ({info.nbytes()}) mismatch!")
            # the buffer is bound-sized; a resized tensor reads its start
            t = torch.frombuffer(raw, dtype=dtype)[:int(torch.Size(shape).numel())]
            inputs.append(t.reshape(shape).clone())
        else:
            inputs.append(torch.ones(shape, dtype=dtype))  # "all input tensor data to ones"
    if specs:
        log("I", 345, f"Inputs resized to {flags['input_shapes']}")

    n = int(flags["num_executions"])
    total = 0.0
    for i in range(n):
        method.set_inputs(inputs)
        start = time.perf_counter()
        method.execute()
        elapsed = (time.perf_counter() - start) * 1e3
        total += elapsed
        log("I", 787, f"Iteration {i + 1} of {n}: {elapsed:f} ms")
    log("I", 799, f"Model executed successfully {n} time(s) in {total:f} ms.")
    outputs = method.get_outputs()
    log("I", 808, f"{len(outputs)} outputs: ")
    if flags["output_file"]:
        for i, out in enumerate(outputs):
            if isinstance(out, torch.Tensor):
                name = f"{flags['output_file']}-{i}.bin"
                log("I", 819, f"Writing output to file: {name}")
                with open(name, "wb") as fh:
                    fh.write(out.contiguous().numpy().tobytes())
    if flags["print_output"] == "summary":
        for i, out in enumerate(outputs):
            if isinstance(out, torch.Tensor):
                values = ", ".join(f"{v:g}" for v in out.flatten().tolist()[:100])
                more = ", ..." if out.numel() > 100 else ""
                print(f"OutputX {i}: tensor(sizes={list(out.shape)}, [{values}{more}])")
            else:
                print(f"OutputX {i}: {out}")
    elif flags["print_output"] == "all":
        for i, out in enumerate(outputs):
            for j, v in enumerate(out.flatten().tolist()):
                print(f"Output[{i}][{j}]: (float) {v:f}")
    sys.stdout.flush()
    if program.has_etdump():
        program.write_etdump_result_to_file(flags["etdump_path"])
        log("I", 276, f"ETDump written to file '{flags['etdump_path']}'.")
    return 0


def run_main() -> int:
    """main() with its stdio flushed, an exception printed, and the exit status returned."""
    try:
        code = main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except Exception:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve(path: str, lifetime_s: float = 900.0) -> None:
    """The warm process: import once, fork one child per run (see module docstring)."""
    import torch  # noqa: F401
    from executorch.extension.pybindings import _C  # noqa: F401

    parent = os.getppid()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    srv.settimeout(0.5)
    deadline = time.monotonic() + lifetime_s
    while time.monotonic() < deadline and os.getppid() == parent:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
    srv.close()


def handle(conn: socket.socket) -> None:
    msg, fds, _, _ = socket.recv_fds(conn, 65536, 3)
    request = json.loads(msg)
    pid = os.fork()
    if pid == 0:  # the run: this process's stdio become the caller's
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        sys.stdin = os.fdopen(0, "r")
        sys.stdout = os.fdopen(1, "w")
        sys.stderr = os.fdopen(2, "w")
        os.chdir(request["cwd"])
        sys.argv = request["argv"]
        global T0
        T0 = time.monotonic()
        os._exit(run_main())
    for fd in fds:
        os.close(fd)
    conn.settimeout(0.2)
    while True:  # a caller killed by `timeout` takes its run with it
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        try:
            if conn.recv(1) == b"":
                os.kill(pid, signal.SIGKILL)
        except TimeoutError:
            pass
        except OSError:
            os.kill(pid, signal.SIGKILL)
    code = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"exit": code}).encode())
    conn.close()


def run_warm(path: str) -> int | None:
    """Run through the warm process; None when there is none to talk to."""
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
    except OSError:
        return None
    request = json.dumps({"argv": sys.argv, "cwd": os.getcwd()}).encode()
    socket.send_fds(conn, [request], [0, 1, 2])
    reply = b""
    while chunk := conn.recv(4096):
        reply += chunk
    code = json.loads(reply)["exit"] if reply else 1
    if code < 0:  # die of the same signal, as the native runner would (abort -> SIGABRT)
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
        sys.exit(0)
    warm = os.environ.get("MERINO_FAKE_RUNNER_SOCKET")
    code = run_warm(warm) if warm else None
    sys.exit(run_main() if code is None else code)
