"""The ADB backend against the loopback adbd (tests/adbd), over a real socket.

The loopback adbd stands for a phone (this machine has none); everything on our side is the
real code: adb-shell, our transport, our device, the real ExecuTorch runtime behind the runner.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path

import pytest

from merino_mobile.device import runners
from merino_mobile.device.adb_transport import AdbTransport, DeviceGone, ensure_adb_key, safe_child
from merino_mobile.device.android import (
    CPU_FREQ_SCRIPT,
    THERMAL_SCRIPT,
    big_cores,
    cpu_mask,
    parse_cpu_max_freq,
    parse_getprop,
    parse_thermal,
)
from merino_mobile.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
from adbd import RUNNER, LoopbackAdbd  # noqa: E402
from adbd.protocol import parse_adb_public_key  # noqa: E402


@pytest.fixture
def key(tmp_path) -> Path:
    return ensure_adb_key(tmp_path / "android" / "adbkey")


@pytest.fixture
def phone(tmp_path):
    with LoopbackAdbd(tmp_path / "phone") as d:
        yield d


@pytest.fixture
def adb(phone, key):
    t = AdbTransport(address=phone.address, key=key)
    yield t
    t.close()


# -- keys and authorization -------------------------------------------------------------------

def test_key_is_created_in_adb_format_with_mode_0600(tmp_path):
    path = ensure_adb_key(tmp_path / "fresh" / ".android" / "adbkey")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    pub = Path(f"{path}.pub").read_bytes()
    assert parse_adb_public_key(pub).key_size == 2048  # the blob adbd stores in adb_keys
    before = path.read_bytes()
    assert ensure_adb_key(path).read_bytes() == before  # an existing key is never replaced


def test_known_key_signs_the_token(tmp_path, key):
    pub = Path(f"{key}.pub").read_bytes()
    with LoopbackAdbd(tmp_path / "p", auth="reject", authorized_keys=(pub,)) as d:
        t = AdbTransport(address=d.address, key=key, auth_timeout_s=1)
        assert t.check(["getprop", "ro.product.model"], "getprop") == "Pixel 7\n"
        t.close()


def test_unaccepted_key_is_a_clear_error(tmp_path, key):
    with LoopbackAdbd(tmp_path / "p", auth="reject") as d:
        t = AdbTransport(address=d.address, key=key, auth_timeout_s=1)
        with pytest.raises(UserError, match="did not accept this computer's key.*Allow USB"):
            t.run(["true"])


def test_nothing_listening_is_a_clear_error(key):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = AdbTransport(address=f"127.0.0.1:{port}", key=key, reconnects=0)
    with pytest.raises(DeviceGone, match="cannot reach adbd.*Wireless debugging"):
        t.run(["true"])


def test_usb_without_libusb_says_what_to_install(key, monkeypatch):
    """USB missing is simulated: the availability function is monkeypatched to answer as on a
    machine without libusb (this venv has adb-shell's usb extra and libusb-package)."""
    from merino_mobile.device import adb_transport

    monkeypatch.setattr(adb_transport, "usb_status", lambda: (
        False, "USB needs libusb-1.0 and none was found", "`pip install libusb-package`"))
    with pytest.raises(UserError, match=r"cannot reach USB 28201FDH2000XY: USB needs libusb-1.0 "
                       r"and none was found: `pip install libusb-package`"):
        AdbTransport(serial="28201FDH2000XY", key=key).run(["true"])


def test_usb_without_a_phone_says_how_to_attach_one(key):
    """With USB working (the install brings it) and no phone attached, the transport says how
    to attach one."""
    from merino_mobile.device.adb_transport import usb_available

    assert usb_available()[0]
    with pytest.raises(UserError, match="no phone with serial 28201FDH2000XY on USB: plug it in"):
        AdbTransport(serial="28201FDH2000XY", key=key).run(["true"])


# -- commands ---------------------------------------------------------------------------------

HOSTILE = ["; touch /tmp/pwned", "$(touch pwned2)", "`touch pwned3`", "a'b\"c\\d",
           "x\ntouch pwned4", "&& touch pwned5 #", "*"]


def test_every_argument_is_quoted(adb, phone):
    r = adb.run(["echo", *HOSTILE])
    assert r.ok and r.stdout == " ".join(HOSTILE) + "\n"
    r = adb.run(["sh", "-c", 'printf "%s|" "$@"', "sh", *HOSTILE])
    assert r.stdout == "".join(a + "|" for a in HOSTILE)
    root = phone.sandbox.root
    for name in ("tmp/pwned", "pwned2", "pwned3", "pwned4", "pwned5"):
        assert not (root / name).exists(), name
    assert not any(p.name.startswith("pwned") for p in root.rglob("*"))


def test_exit_code_stderr_and_stdin(adb):
    r = adb.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.returncode, r.stdout, r.stderr, r.timed_out) == (3, "out\n", "err\n", False)
    assert adb.run(["sh", "-c", "printf x"]).stdout == "x"  # no newline added or lost
    assert adb.run(["cat"], stdin="line 1\n; rm -rf /\n").stdout == "line 1\n; rm -rf /\n"


def test_a_hung_command_is_killed_on_the_phone(adb, phone):
    r = adb.run(["sleep", "30"], timeout=1)
    assert r.timed_out and not r.ok
    assert all(p.poll() is not None for p in phone.procs)


# -- files ------------------------------------------------------------------------------------

def test_push_is_verified_and_pull_returns_the_bytes(adb, phone, tmp_path):
    data = os.urandom(200_000)
    src = tmp_path / "model.pte"
    src.write_bytes(data)
    adb.push(src, "/data/local/tmp/merino-mobile/x/model.pte")
    assert phone.sandbox.host_path("/data/local/tmp/merino-mobile/x/model.pte").read_bytes() == data
    assert adb.sha256("/data/local/tmp/merino-mobile/x/model.pte") == \
        hashlib.sha256(data).hexdigest()
    assert adb.sha256("/data/local/tmp/nope") is None
    adb.pull("/data/local/tmp/merino-mobile/x/model.pte", tmp_path / "back" / "model.pte")
    assert (tmp_path / "back" / "model.pte").read_bytes() == data
    with pytest.raises(UserError, match="cannot pull /data/local/tmp/nope"):
        adb.pull("/data/local/tmp/nope", tmp_path / "nope")


def test_corrupted_push_is_retried_then_fails_clearly(tmp_path, key):
    src = tmp_path / "model.pte"
    src.write_bytes(os.urandom(50_000))
    with LoopbackAdbd(tmp_path / "p1", corrupt_pushes=1) as d:
        t = AdbTransport(address=d.address, key=key)
        t.push(src, "/data/local/tmp/a/model.pte")  # first copy corrupted, second one good
        assert d.sandbox.host_path("/data/local/tmp/a/model.pte").read_bytes() == \
            src.read_bytes()
        t.close()
    with LoopbackAdbd(tmp_path / "p2", corrupt_pushes=2) as d:
        t = AdbTransport(address=d.address, key=key)
        with pytest.raises(UserError, match="twice.*sha256.*corrupted"):
            t.push(src, "/data/local/tmp/a/model.pte")
        assert not d.sandbox.host_path("/data/local/tmp/a/model.pte").exists()
        t.close()


def test_pulled_files_never_escape_the_target(tmp_path, key):
    hostile = ("../escaped.txt", "..", "/tmp/abs.txt", "a\\b", "sub/inner.txt", "")
    with LoopbackAdbd(tmp_path / "p", hostile_names=hostile) as d:
        out = d.sandbox.host_path("/data/local/tmp/out")
        out.mkdir(parents=True)
        (out / "output-0.bin").write_bytes(b"\x01\x02")
        (d.sandbox.root / "escaped.txt").write_text("phone file")
        t = AdbTransport(address=d.address, key=key)
        target = tmp_path / "pulled" / "here"
        pulled, refused = t.pull_tree("/data/local/tmp/out", target)
        t.close()
    assert pulled == [target.resolve() / "output-0.bin"]
    assert set(refused) == {"../escaped.txt", "/tmp/abs.txt", "a\\b", "sub/inner.txt", ""}
    assert sorted(p.name for p in (tmp_path / "pulled").rglob("*")) == ["here", "output-0.bin"]
    assert safe_child(target, "ok.bin") == target.resolve() / "ok.bin"
    for bad in ("..", ".", "../x", "/etc/passwd", "a/b", "a\0b", "x\n"):
        assert safe_child(target, bad) is None, bad


# -- faults: the phone goes away ----------------------------------------------------------------

def test_a_dropped_connection_is_reconnected_once(tmp_path, key):
    with LoopbackAdbd(tmp_path / "p", drop_after_commands=1) as d:
        t = AdbTransport(address=d.address, key=key)
        assert t.run(["echo", "one"]).stdout == "one\n"
        assert t.run(["echo", "two"]).stdout == "two\n"  # the drop happened here
        assert len(d.connections) == 2
        t.close()


def test_a_phone_that_stays_gone_is_device_gone(tmp_path, key):
    d = LoopbackAdbd(tmp_path / "p").start()
    t = AdbTransport(address=d.address, key=key)
    assert t.run(["true"]).ok
    d.stop()
    with pytest.raises(DeviceGone, match="rerun the same command"):
        t.run(["true"])
    t.close()


# -- what the phone says about itself -----------------------------------------------------------

def test_facts_parsers_on_pixel7_output(adb):
    props = parse_getprop(adb.check(["getprop"], "getprop"))
    assert props["ro.soc.model"] == "Tensor G2" and props["ro.product.cpu.abi"] == "arm64-v8a"
    freq = parse_cpu_max_freq(adb.check(["sh", "-c", CPU_FREQ_SCRIPT], "freq"))
    assert len(freq) == 8 and big_cores(freq) == (6, 7) and cpu_mask(big_cores(freq)) == "c0"
    temps = parse_thermal(adb.check(["sh", "-c", THERMAL_SCRIPT], "thermal"))
    assert temps["BIG"] == 41.0 and temps["battery"] == 31.0
    assert parse_thermal("cpu\t-273000\nskin\t0\nsoc\t52\ncpu\t48500\n") == \
        {"soc": 52.0, "cpu": 48.5}


# -- runner output formats ----------------------------------------------------------------------

# executor_runner as of ExecuTorch 0.4-1.0: no per-iteration lines (posix PAL log format).
OLD_RUNNER = """\
I 00:00:00.001233 executorch:executor_runner.cpp:73] Model file model.pte is loaded.
I 00:00:00.001280 executorch:executor_runner.cpp:82] Using method forward
I 00:00:00.001290 executorch:executor_runner.cpp:129] Setting up planned buffer 0, size 64.
I 00:00:00.002012 executorch:executor_runner.cpp:152] Method loaded.
I 00:00:00.002100 executorch:executor_runner.cpp:162] Inputs prepared.
I 00:00:00.090412 executorch:executor_runner.cpp:171] Model executed successfully 10 time(s) \
in 88.300000 ms.
I 00:00:00.090500 executorch:executor_runner.cpp:175] 1 outputs:
OutputX 0: tensor(sizes=[1, 4], [8., 8., 8., 8.])
"""
NEW_RUNNER = """\
I 00:00:00.000512 executorch:executor_runner.cpp:362] Resetting threadpool with num threads = 2
I 00:00:00.003001 executorch:executor_runner.cpp:590] Model loaded in 2.481000 ms.
I 00:00:00.004000 executorch:executor_runner.cpp:787] Iteration 1 of 3: 1.500000 ms
I 00:00:00.005000 executorch:executor_runner.cpp:787] Iteration 2 of 3: 1.250000 ms
I 00:00:00.006000 executorch:executor_runner.cpp:787] Iteration 3 of 3: 1.000000 ms
I 00:00:00.006100 executorch:executor_runner.cpp:799] Model executed successfully 3 time(s) \
in 3.750000 ms.
"""


def test_parse_executor_runner_both_generations():
    old = runners.parse_executor_runner(OLD_RUNNER)
    assert (old.executions, old.total_ms, old.iterations_ms) == (10, 88.3, [])
    assert old.samples() == [pytest.approx(8.83)]
    new = runners.parse_executor_runner(NEW_RUNNER)
    assert new.iterations_ms == [1.5, 1.25, 1.0] and new.samples(skip=1) == [1.25, 1.0]
    assert (new.threads, new.load_ms, new.total_ms) == (2, 2.481, 3.75)
    crash = runners.parse_executor_runner(
        "E 00:00:00.000100 executorch:executor_runner.cpp:461] Failed to parse model file m.pte\n")
    assert not crash.ok and crash.errors == ["Failed to parse model file m.pte"]
    argv = runners.executor_runner_argv("/d/r", "/d/m.pte", method="decode", num_executions=5,
                                        threads=2, inputs=["/d/a.bin", "/d/b.bin"])
    assert argv == ["/d/r", "--model_path=/d/m.pte", "--num_executions=5", "--print_output=none",
                    "--method_name=decode", "--cpu_threads=2", "--inputs=/d/a.bin,/d/b.bin"]


def test_parse_minibench_and_ort_perf_test():
    app = ('[{"benchmarkModel":{"name":"tiny","backend":"xnnpack","quantization":"fp32"},'
           '"metric":"avg_inference_latency(ms)","actualValue":4.5,"targetValue":0.0},'
           '{"benchmarkModel":{"name":"tiny","backend":"xnnpack","quantization":"fp32"},'
           '"metric":"trimmean_inference_latency(ms)","actualValue":4.2,"targetValue":0.0},'
           '{"benchmarkModel":{"name":"tiny","backend":"","quantization":""},'
           '"metric":"model_load_time(ms)","actualValue":31.0,"targetValue":0.0},'
           '{"benchmarkModel":{"name":"tiny","backend":"","quantization":""},'
           '"metric":"load_status","actualValue":0.0,"targetValue":0.0}]')
    t = runners.parse_minibench(app)
    assert t.ok and t.samples() == [4.2] and t.load_ms == 31.0 and not t.errors
    ort = ("Setting intra_op_num_threads to 2\nSession creation time cost: 0.0166 s\n"
           "First inference time cost: 2 ms\nTotal inference time cost: 0.0453 s\n"
           "Total inference requests: 100\nAverage inference time cost total: 0.453 ms\n"
           "Total inference run time: 0.0459 s\nMin Latency: 0.000412 s\n"
           "P50 Latency: 0.000433 s\nP90 Latency: 0.00049 s\n")
    t = runners.parse_ort_perf_test(ort)
    assert t.executions == 100 and t.samples() == [pytest.approx(0.453)]
    assert t.p50_ms == pytest.approx(0.433) and t.threads == 2
    assert runners.ort_perf_test_argv("/d/ort", "/d/m.onnx", runs=20, threads=2) == \
        ["/d/ort", "-e", "cpu", "-m", "times", "-r", "20", "-x", "2", "-I", "/d/m.onnx"]


def et_line(msg: str) -> str:
    return f"I 00:00:00.004000 executorch:executor_runner.cpp:787] {msg}"


@pytest.mark.parametrize("bad", [
    "Iteration 2 of 3: 1.2.3 ms", "Iteration 2 of 3: -1.250000 ms", "Model loaded in nan ms.",
    "Model executed successfully 3 time(s) in inf ms."])
def test_executor_runner_malformed_time_is_a_quoted_error(bad):
    text = NEW_RUNNER + et_line(bad) + "\n"
    t = runners.parse_executor_runner(text)  # never a ValueError
    assert not t.ok and t.samples() == [] and t.malformed == [et_line(bad)]
    assert t.error() == f"{runners.MALFORMED}: {et_line(bad)!r}" and t.error() in t.errors
    good = runners.parse_executor_runner(NEW_RUNNER)
    assert good.ok and good.error() is None and good.malformed == []


def minibench_json(**values: object) -> str:
    import json

    return json.dumps([{"benchmarkModel": {"name": "tiny"}, "metric": k, "actualValue": v,
                        "targetValue": 0.0} for k, v in values.items()])


@pytest.mark.parametrize("metric, value", [
    ("trimmean_inference_latency(ms)", "4.2.1"), ("trimmean_inference_latency(ms)", -4.2),
    ("trimmean_inference_latency(ms)", float("nan")), ("model_load_time(ms)", float("inf")),
    ("load_status", "failed"), ("trimmean_inference_latency(ms)", True)])
def test_minibench_malformed_value_is_a_quoted_error(metric, value):
    values = {"trimmean_inference_latency(ms)": 4.2, "model_load_time(ms)": 31.0,
              "load_status": 0.0} | {metric: value}
    t = runners.parse_minibench(minibench_json(**values))
    assert not t.ok and t.samples() == [] and len(t.malformed) == 1
    assert f'"metric": "{metric}"' in t.malformed[0] and t.error() == \
        f"{runners.MALFORMED}: {t.malformed[0]!r}"
    for not_records in ("3", '{"metric": "load_status"}', '"text"'):
        t = runners.parse_minibench(not_records)
        assert not t.ok and t.error().startswith("benchmark_results.json is not a list")


ORT_OUTPUT = ("Setting intra_op_num_threads to 2\nSession creation time cost: 0.0166 s\n"
              "Total inference requests: 100\nAverage inference time cost total: 0.453 ms\n"
              "P50 Latency: 0.000433 s\nP90 Latency: 0.00049 s\n")


@pytest.mark.parametrize("good, bad", [
    ("Average inference time cost total: 0.453 ms", "Average inference time cost total: 1.2.3 ms"),
    ("P50 Latency: 0.000433 s", "P50 Latency: nan s"),
    ("Session creation time cost: 0.0166 s", "Session creation time cost: -0.0166 s")])
def test_ort_perf_test_malformed_time_is_a_quoted_error(good, bad):
    assert runners.parse_ort_perf_test(ORT_OUTPUT).ok
    t = runners.parse_ort_perf_test(ORT_OUTPUT.replace(good, bad))
    assert not t.ok and t.samples() == [] and t.malformed == [bad]
    assert t.error() == f"{runners.MALFORMED}: {bad!r}"


def test_a_malformed_runner_line_fails_the_method_naming_it(tmp_path):
    """Through the phone: a runner that exits 0 but prints an unreadable time fails its method
    with the line quoted, and bench turns that into a UserError naming the line."""
    from merino_mobile.deploy.bench import explain_failure
    from merino_mobile.device.android import AndroidPhone
    from merino_mobile.device.base import BenchRequest, InputSpec, MethodSpec
    from merino_mobile.device.profiles import read_profile

    line = et_line("Iteration 1 of 3: 1.2.3 ms")
    et = tmp_path / "odd_runner"
    et.write_text(f"#!/bin/sh\necho '{et_line('Model loaded in 2.0 ms.')}' >&2\n"
                  f"echo '{line}' >&2\n"
                  f"echo '{et_line('Model executed successfully 3 time(s) in 3.0 ms.')}' >&2\n")
    ort_bad = "Average inference time cost total: nan ms"
    ort = tmp_path / "odd_ort"
    ort.write_text(f"#!/bin/sh\nprintf '%s' '{ORT_OUTPUT}' | sed 's/^Average.*/{ort_bad}/'\n")
    for tool in (et, ort):
        tool.chmod(0o755)
    pte, onnx = tmp_path / "m.pte", tmp_path / "m.onnx"
    pte.write_bytes(b"not a flatbuffer")
    onnx.write_bytes(b"not a model")
    methods = (MethodSpec("forward", (InputSpec((2, 8)),)),)
    with LoopbackAdbd(tmp_path / "phone") as d:
        path = write_profile(tmp_path / "p.toml", d.address, et, remote_dir="/data/x")
        path.write_text(path.read_text().replace(
            'remote_dir = "/data/x"', f'remote_dir = "/data/x"\nonnxruntime_perf_test = "{ort}"'))
        dev = AndroidPhone(read_profile(path))
        res = dev.benchmark(dev.prepare(pte), BenchRequest(
            "executorch", methods, warmup=0, min_repeats=3, timeout_s=30.0)).results[0]
        assert not res.ok and res.samples_ms == () and repr(line) in res.error
        err = explain_failure(res, "loopback-pixel7", "forward")
        assert isinstance(err, UserError) and repr(line) in str(err) and "\n" not in str(err)
        res = dev.benchmark(dev.prepare(onnx), BenchRequest(
            "onnxruntime", methods, warmup=0, min_repeats=2, timeout_s=30.0)).results[0]
        assert not res.ok and res.error.startswith("onnxruntime_perf_test: ")
        assert repr(ort_bad) in res.error
        dev.cleanup()


# -- the device: fingerprint, prepare, benchmark a real .pte ------------------------------------

def write_profile(path: Path, address: str, runner: Path, *, remote_dir: str, threads: int = 2,
                  max_temp_c: float = 45.0, max_wait_s: float = 5.0) -> Path:
    path.write_text(f"""
schema_version = 1
name = "loopback-pixel7"
description = "the loopback adbd standing for a Pixel 7"
transport = "adb"
runtimes = ["executorch"]
threads = {threads}
cpus = []

[adb]
address = "{address}"
adbkey = "{path.parent / 'android' / 'adbkey'}"
remote_dir = "{remote_dir}"
runner = "{runner}"

[cooldown]
max_temp_c = {max_temp_c}
wait_s = 0.2
max_wait_s = {max_wait_s}

[sentinel]
every = 100
threshold = 100.0   # micro-models of 0.05 ms on a shared CI machine drift; not under test here

[measure]
warmup = 1
min_repeats = 3
max_repeats = 6
target_spread = 100.0
max_seconds = 5.0
timeout_s = 90.0
""")
    return path


class Tiny(__import__("torch").nn.Module):
    def __init__(self) -> None:
        import torch

        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(8, 4)
        self.emb = torch.nn.Embedding(256, 4)

    def forward(self, x):
        return self.proj(x).relu()

    def embed(self, tokens):
        return self.emb(tokens)


@pytest.fixture(scope="module")
def tiny_pte(tmp_path_factory) -> tuple[Path, Tiny]:
    """A two-method .pte lowered to XNNPACK with ExecuTorch's own API, one method with a dynamic
    input length (and a hostile file name: every shell argument must be quoted)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = Tiny().eval()

    class Embed(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, tokens):
            return self.m.embed(tokens)

    programs = {
        "forward": torch.export.export(model, (torch.randn(2, 8),)),
        # dynamic length: the phone runs it below its bound with --input_shapes
        "embed": torch.export.export(Embed(model), (torch.zeros(1, 5, dtype=torch.long),),
                                     dynamic_shapes={"tokens": {1: torch.export.Dim("T", max=8)}}),
    }
    pte = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()]).to_executorch()
    path = tmp_path_factory.mktemp("pte") / "tiny; touch pwned $(touch pwned2).pte"
    path.write_bytes(pte.buffer)
    return path, model


@pytest.mark.slow
def test_device_fingerprint_prepare_benchmark_cleanup(tmp_path, tiny_pte, warm_runner):
    import numpy as np
    import torch

    from merino_mobile.device.android import AndroidPhone
    from merino_mobile.device.base import BenchRequest, InputSpec, MethodSpec
    from merino_mobile.device.profiles import read_profile
    from merino_mobile.device.worker import make_inputs

    artifact, model = tiny_pte
    warm_runner.wait_ready()
    with LoopbackAdbd(tmp_path / "phone", warm_runner=warm_runner) as d:
        remote_dir = "/data/local/tmp/merino mobile; touch /tmp/pwned"
        prof = read_profile(write_profile(tmp_path / "p.toml", d.address, RUNNER,
                                          remote_dir=remote_dir))
        dev = AndroidPhone(prof)
        fp = dev.fingerprint("executorch", "fp32")
        assert (fp.model, fp.cpu, fp.cores, fp.abi, fp.cpus) == \
            ("Pixel 7", "Tensor G2", 8, "arm64-v8a", (6, 7))
        assert fp.os.startswith("Android 14 (") and fp.runtime_version.startswith(
            "executor_runner.py sha256:")
        assert dev.runtimes() == ["executorch"]

        handle = dev.prepare(artifact)
        assert handle.remote == f"{remote_dir}/{handle.sha256}/{artifact.name}"
        assert d.sandbox.host_path(handle.remote).read_bytes() == artifact.read_bytes()
        n_commands = len(d.commands)
        assert dev.prepare(artifact) == handle and len(d.commands) == n_commands  # pushed once

        x_spec = InputSpec((2, 8), "float32", "randn")
        request = BenchRequest("executorch", (
            MethodSpec("forward", (x_spec,)),
            MethodSpec("embed", (InputSpec((1, 5), "int64", 7),))),
            warmup=1, min_repeats=3, max_repeats=6, target_spread=100.0, timeout_s=90.0)
        events = []
        result = dev.benchmark(handle, request, on_event=lambda *e: events.append(e[:2]))
        assert [r.name for r in result.results] == ["forward", "embed"]
        for r in result.results:
            assert r.ok and len(r.samples_ms) >= 3 and all(s > 0 for s in r.samples_ms), r
            assert r.load_ms is not None and r.load_ms > 0  # "Model loaded in x ms."
        assert any("--input_shapes=1x5" in c for c in d.commands)  # embed below its bound
        assert events == [("start", "forward"), ("done", "forward"),
                          ("start", "embed"), ("done", "embed")]
        # Pinned to the big cores with the profile's thread count; temperatures recorded.
        assert set(d.sandbox.taskset_log.read_text().split()) == {"c0"}
        assert result.cpus == (6, 7) and result.threads == 2
        assert result.temps_before_c["BIG"] == 41.0 and result.temps_after_c
        assert result.to_json()["cooled"] is True
        # The runner really executed the model: its pulled output matches torch.
        x = make_inputs((x_spec,))[0]
        want = model(torch.from_numpy(x)).detach().numpy()
        out = Path(result.outputs["forward"][0])
        assert out.name == "output-0.bin" and out.is_relative_to(dev._outputs)
        got = np.frombuffer(out.read_bytes(), np.float32).reshape(2, 4)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        emb = np.frombuffer(Path(result.outputs["embed"][0]).read_bytes(), np.float32)
        np.testing.assert_allclose(emb.reshape(1, 5, 4)[0, 0], model.emb.weight[7].detach())

        dev.cleanup()
        left = {p.name for p in d.sandbox.host_path(remote_dir).iterdir()}
        assert left == {file_sha(RUNNER)}  # only the runner stays, for the next session
        # "pwned" exists only as a path component of the (quoted) remote dir itself.
        inside = d.sandbox.host_path(remote_dir)
        assert [p for p in d.sandbox.root.rglob("pwned*") if p != inside] == []
        assert not (d.sandbox.root / "tmp" / "pwned").exists()


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_runner_crash_and_hang_are_per_method_errors(tmp_path, tiny_pte, warm_runner):
    from merino_mobile.device.android import AndroidPhone
    from merino_mobile.device.base import BenchRequest, InputSpec, MethodSpec
    from merino_mobile.device.profiles import read_profile

    broken = tmp_path / "broken.pte"
    broken.write_bytes(b"not a flatbuffer" * 64)
    hang = tmp_path / "hung_runner"
    hang.write_text("#!/bin/sh\nsleep 60\n")
    hang.chmod(0o755)
    request = BenchRequest("executorch", (MethodSpec("forward", (InputSpec((2, 8)),)),),
                           warmup=1, min_repeats=2, timeout_s=2.0)
    warm_runner.wait_ready()
    with LoopbackAdbd(tmp_path / "phone", warm_runner=warm_runner) as d:
        prof = read_profile(write_profile(tmp_path / "p.toml", d.address, RUNNER,
                                          remote_dir="/data/local/tmp/mm"))
        dev = AndroidPhone(prof)
        crashed = dev.benchmark(dev.prepare(broken), BenchRequest(
            "executorch", request.methods, timeout_s=60.0))
        assert not crashed.results[0].ok
        assert "runner failed (exit 1): Failed to parse model file" in crashed.results[0].error
        dev.cleanup()

        hung = AndroidPhone(prof, runner=hang)
        res = hung.benchmark(hung.prepare(tiny_pte[0]), request)
        assert res.results[0].error == "runner timed out after 2s"
        assert all(p.poll() is not None for p in d.procs)  # killed on the phone, not orphaned
        hung.cleanup()


def test_cooldown_waits_for_the_threshold_and_is_bounded(tmp_path):
    import threading

    from merino_mobile.device.android import AndroidPhone
    from merino_mobile.device.profiles import read_profile

    with LoopbackAdbd(tmp_path / "phone") as d:
        d.sandbox.set_temperature("BIG", 52000)
        prof = read_profile(write_profile(tmp_path / "p.toml", d.address, RUNNER,
                                          remote_dir="/data/local/tmp/mm", max_wait_s=20))
        dev = AndroidPhone(prof)
        cool = threading.Timer(1.0, d.sandbox.set_temperature, ("BIG", 43000))
        cool.start()
        temps, waited, cooled = dev.cooldown()
        cool.join()
        assert cooled and waited >= 0.9 and temps["BIG"] == 43.0

        d.sandbox.set_temperature("BIG", 60000)  # stays hot: measure anyway after max_wait_s
        hot = AndroidPhone(read_profile(write_profile(
            tmp_path / "q.toml", d.address, RUNNER, remote_dir="/data/local/tmp/mm",
            max_wait_s=0.5)))
        temps, waited, cooled = hot.cooldown()
        assert not cooled and waited < 3 and temps["BIG"] == 60.0
        dev.cleanup()
        hot.cleanup()


def test_missing_runner_names_the_build_command(tmp_path):
    from merino_mobile.device.android import AndroidPhone
    from merino_mobile.device.profiles import read_profile

    with LoopbackAdbd(tmp_path / "phone") as d:
        prof = read_profile(write_profile(tmp_path / "p.toml", d.address,
                                          tmp_path / "no-such-runner", remote_dir="/data/x"))
        dev = AndroidPhone(prof)
        assert dev.runtimes() == []
        pte = tmp_path / "m.pte"
        pte.write_bytes(b"x")
        with pytest.raises(UserError, match="merino-mobile runner build --ndk"):
            dev.prepare(pte)
        dev.cleanup()


def test_a_profile_for_another_model_is_refused(tmp_path):
    from merino_mobile.device.android import AndroidPhone
    from merino_mobile.device.profiles import read_profile

    with LoopbackAdbd(tmp_path / "phone") as d:
        path = write_profile(tmp_path / "p.toml", d.address, RUNNER, remote_dir="/data/x")
        path.write_text(path.read_text().replace(
            'remote_dir = "/data/x"', 'remote_dir = "/data/x"\nexpect_model = ["Pixel 8"]'))
        dev = AndroidPhone(read_profile(path))
        with pytest.raises(UserError, match=r"is for \['Pixel 8'\] but the phone .* 'Pixel 7'"):
            dev.fingerprint("executorch", "fp32")
        dev.cleanup()


def test_shipped_phone_profiles():
    from merino_mobile.device.adb_transport import usb_serial
    from merino_mobile.device.profiles import read_profile

    devices = Path(__file__).parents[1] / "devices"
    masks = {}
    for name in ("pixel7", "pixel8", "galaxy-s23", "oneplus-12"):
        prof = read_profile(devices / f"{name}.toml")
        assert prof.transport == "adb" and usb_serial(prof.adb.serial) is None
        assert prof.adb.extra["expect_model"] and prof.cooldown.max_temp_c
        assert 1 <= prof.threads <= len(prof.cpus)
        masks[name] = cpu_mask(prof.cpus)
    assert masks == {"pixel7": "c0", "pixel8": "1f0", "galaxy-s23": "f8", "oneplus-12": "f0"}


# -- runner build and Core ML (what cannot run here says why) -----------------------------------

def test_runner_build_commands(tmp_path):
    from merino_mobile.runner_build import RunnerBuild

    ndk, src = tmp_path / "android-ndk-r27c", tmp_path / "executorch"
    b = RunnerBuild(ndk, src, out=tmp_path / "out" / "executor_runner", jobs=8, python="python3")
    configure, build = b.commands()
    out_dir = str(src / "cmake-out-android-arm64-v8a")
    assert configure[:5] == ["cmake", "-S", str(src), "-B", out_dir]
    flags = set(configure[5:])
    assert {f"-DCMAKE_TOOLCHAIN_FILE={ndk}/build/cmake/android.toolchain.cmake",
            "-DANDROID_ABI=arm64-v8a", "-DANDROID_PLATFORM=android-26",
            "-DEXECUTORCH_BUILD_XNNPACK=ON", "-DEXECUTORCH_BUILD_EXECUTOR_RUNNER=ON",
            "-DEXECUTORCH_BUILD_KERNELS_OPTIMIZED=ON", "-DEXECUTORCH_BUILD_KERNELS_QUANTIZED=ON",
            "-DEXECUTORCH_BUILD_KERNELS_LLM=ON", "-DEXECUTORCH_PAL_DEFAULT=posix",
            "-DCMAKE_BUILD_TYPE=Release", "-DPYTHON_EXECUTABLE=python3"} <= flags
    assert all(f.startswith("-D") and "=" in f for f in flags)
    assert build == ["cmake", "--build", str(src / "cmake-out-android-arm64-v8a"), "--target",
                     "executor_runner", "-j8", "--config", "Release"]
    missing = " ".join(b.missing())
    assert "android.toolchain.cmake" in missing and "ExecuTorch sources" in missing
    with pytest.raises(UserError, match="cannot build the runner here; missing: the Android NDK"):
        b.run()
    # With an NDK and a checkout (submodules not initialised) the message moves on.
    (ndk / "build" / "cmake").mkdir(parents=True)
    b.toolchain.write_text("")
    src.mkdir()
    (src / "CMakeLists.txt").write_text("")
    assert any("git submodule update --init --recursive" in m for m in b.missing())


def test_runner_build_cli(tmp_path):
    import subprocess

    cmd = [sys.executable, "-c", "from merino_mobile.cli import main; main()", "runner", "build",
           "--ndk", str(tmp_path / "ndk"), "--executorch-src", str(tmp_path / "et")]
    dry = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.strip().splitlines()
    assert lines[0].startswith("cmake -S ") and "-DANDROID_ABI=arm64-v8a" in lines[0]
    assert lines[1].startswith("cmake --build ") and "--target executor_runner" in lines[1]
    real = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert real.returncode == 2 and "Traceback" not in real.stderr
    assert "missing: the Android NDK toolchain file" in real.stderr


def test_coreml_is_unavailable_off_macos_with_the_reason(tmp_path):
    from merino_mobile.device import coreml

    ok, why = coreml.available()
    if sys.platform == "darwin":
        pytest.fail("this test covers Linux and Windows; on macOS Core ML is available")
    assert not ok and why.startswith("Core ML prediction needs macOS")
    assert coreml.check_compute_units("cpu_and_ne") == "CPU_AND_NE"
    with pytest.raises(UserError, match="CPU_ONLY, CPU_AND_GPU, CPU_AND_NE, ALL"):
        coreml.check_compute_units("gpu")

    class Prof:
        name = "mac"

    dev = coreml.CoreMLDevice(Prof(), "CPU_ONLY")
    assert dev.runtimes() == []
    with pytest.raises(UserError, match="Core ML prediction needs macOS"):
        dev.prepare(tmp_path / "m.mlpackage")


# -- the profiler end to end through the loopback phone ----------------------------------------

TINY_GRID_ARGS = ("tiny", (64,), (1.0,), 64, 256, 64, (16,), (), (64,))


@pytest.mark.slow
def test_profile_through_adb_survives_the_phone_leaving(tmp_path, warm_runner, monkeypatch):
    """`profile` on the loopback phone: the phone disappears in the second program, the run stops
    with a clear error, the points of the first program are kept, and the rerun after the phone
    is back measures only the rest and writes the table."""
    import json

    from merino_mobile.latency import programs
    from merino_mobile.latency.grid import Grid
    from merino_mobile.latency.profile import run_profile
    from merino_mobile.latency.store import Store
    from merino_mobile.workspace import Workspace

    # Two programs for five points; the second (the decode layer alone) is also the sentinel's
    # program, so only two are exported.
    monkeypatch.setattr(programs, "MAX_METHODS", 4)
    grid = Grid(*TINY_GRID_ARGS)
    assert len(grid.points()) == 5
    ws = Workspace.resolve(tmp_path / "ws")
    ws.devices.mkdir(parents=True)
    warm_runner.wait_ready()
    # Runner calls: sentinel 1, first program 4, then the 6th (the second program) meets no phone.
    with LoopbackAdbd(tmp_path / "phone", warm_runner=warm_runner, die_after_commands=5,
                      die_counting="--model_path=") as d:
        write_profile(ws.devices / "loopback-pixel7.toml", d.address, RUNNER,
                      remote_dir="/data/local/tmp/merino-mobile")
        with pytest.raises(DeviceGone, match="rerun the same command"):
            run_profile(ws, "loopback-pixel7", grid=grid)
        port = d.port
    store = Store.open(ws.state)
    try:
        (fp_key,), = store.db.execute("SELECT key FROM fingerprints").fetchall()
        kept = store.measured(fp_key, "executorch", "fp32")
    finally:
        store.close()
    assert kept == {p.key for p in grid.points()[:4]}

    with LoopbackAdbd(tmp_path / "phone", port=port, warm_runner=warm_runner) as d:
        report = run_profile(ws, "loopback-pixel7", grid=grid)
        assert "executor_runner" in " ".join(d.commands)
    assert (report.points, report.skipped, report.measured, report.failed) == (5, 4, 1, [])
    assert report.fingerprint["model"] == "Pixel 7" and report.fingerprint["cpus"] == [6, 7]
    lut = json.loads(Path(report.lut).read_text())
    assert lut["fingerprint"]["cpu"] == "Tensor G2"


def test_list_adb_devices_reports_each_target(tmp_path, monkeypatch):
    """The USB row is simulated (no USB device can be attached here): one phone that this user
    may not open, which the row names with the udev fix."""
    import socket

    from merino_mobile.device import adb_transport
    from merino_mobile.device.adb_transport import UsbPhone, list_adb_devices
    from merino_mobile.device.profiles import read_profile

    monkeypatch.setattr(adb_transport, "find_usb_phones",
                        lambda: [UsbPhone(0x18D1, 0x4EE7, None, "USBErrorAccess")])

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with LoopbackAdbd(tmp_path / "phone") as d:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        up = read_profile(write_profile(tmp_path / "a" / "up.toml", d.address, RUNNER,
                                        remote_dir="/data/x"))
        down = read_profile(write_profile(tmp_path / "b" / "down.toml", f"127.0.0.1:{closed}",
                                          RUNNER, remote_dir="/data/x"))
        ensure_adb_key(tmp_path / "a" / "android" / "adbkey")
        rows = list_adb_devices([up, down])
    usb, tcp_up, tcp_down = rows
    assert usb["transport"] == "usb" and usb["reachable"] is False
    assert usb["reason"].startswith("a phone is on USB (18d1:4ee7) but this user may not open it")
    assert (tcp_up["serial"], tcp_up["reachable"], tcp_up["reason"]) == \
        (d.address, True, f"Pixel 7 at {d.address}")
    assert tcp_down["reachable"] is False and "cannot reach adbd" in tcp_down["reason"]


@pytest.mark.slow
def test_benchmark_app_instead_of_the_native_runner(tmp_path, tiny_pte, warm_runner):
    """runner = "minibench": ExecuTorch's Android benchmark app. The loopback phone's `pm`,
    `am` and `run-as` stand for the app (this machine has no Android): `am start` runs the
    model and writes the app's benchmark_results.json."""
    from merino_mobile.device.android import AndroidPhone
    from merino_mobile.device.base import BenchRequest, InputSpec, MethodSpec
    from merino_mobile.device.profiles import read_profile

    warm_runner.wait_ready()
    with LoopbackAdbd(tmp_path / "phone", warm_runner=warm_runner) as d:
        path = write_profile(tmp_path / "p.toml", d.address, RUNNER, remote_dir="/data/x")
        path.write_text(path.read_text().replace(f'runner = "{RUNNER}"', 'runner = "minibench"'))
        dev = AndroidPhone(read_profile(path))
        assert dev.runtimes() == []  # not installed yet
        with pytest.raises(UserError, match="benchmark app.*not installed"):
            dev.prepare(tiny_pte[0])
        d.sandbox.install_benchmark_app()
        dev = AndroidPhone(read_profile(path))
        assert dev.runtimes() == ["executorch"]
        request = BenchRequest("executorch", (MethodSpec("forward", (InputSpec((2, 8)),)),
                                              MethodSpec("embed", ())),
                               warmup=2, max_repeats=10, timeout_s=60.0)
        res = dev.benchmark(dev.prepare(tiny_pte[0]), request)
        forward, embed = res.results
        assert forward.ok and len(forward.samples_ms) == 1 and forward.samples_ms[0] > 0
        assert "runs only the 'forward' method" in embed.error
        assert (res.threads, res.cpus) == (0, ())  # the app is not pinned by us
        assert any("am start -W -S -n org.pytorch.minibench/" in c for c in d.commands)
        dev.cleanup()


def test_dynamic_inputs_are_padded_to_the_bound():
    from merino_mobile.device.base import InputSpec, MethodSpec
    from merino_mobile.device.pte_inputs import fit_inputs

    m = MethodSpec("forward", (InputSpec((1, 3), "int64", 7), InputSpec((1,), "int64", 2)))
    files, shapes = fit_inputs(m, [(7).to_bytes(8, "little") * 3, (2).to_bytes(8, "little")],
                               [(1, 8), (1,)])
    assert shapes == ["1x3", ""]
    assert files[0] == (7).to_bytes(8, "little") * 3 + bytes(8 * 5) and len(files[1]) == 8
    too_long = MethodSpec("forward", (InputSpec((1, 9), "int64", 7),))
    with pytest.raises(UserError, match=r"shape \[1, 9\], outside the exported bound \[1, 8\]"):
        fit_inputs(too_long, [bytes(72)], [(1, 8)])


@pytest.mark.slow
def test_bench_an_exported_decoder_on_the_loopback_phone(tmp_path, warm_runner):
    """`merino-mobile bench` through AndroidPhone: a tiny decoder exported by the real exporter,
    prefill at a prompt below its cache bound (--input_shapes) and decode, on the phone."""
    from merino_mobile.card import Block, Card
    from merino_mobile.deploy.bench import bench_artifact
    from merino_mobile.export import export
    from merino_mobile.workspace import Workspace

    card = Card(name="tiny", vocab=256, context=48, head_dim=16,
                blocks=(Block(64, 4.0, 4, 2, shared=True),))
    artifact = Path(export(card, "executorch", "fp32", tmp_path / "out", verify=False).artifact)
    ws = Workspace.resolve(tmp_path / "ws")
    ws.devices.mkdir(parents=True)
    warm_runner.wait_ready()
    with LoopbackAdbd(tmp_path / "phone", warm_runner=warm_runner) as d:
        write_profile(ws.devices / "loopback-pixel7.toml", d.address, RUNNER,
                      remote_dir="/data/local/tmp/merino-mobile")
        report = bench_artifact(ws, artifact, "loopback-pixel7", prompt=8, generate=8, repeat=3)
        runs = [c for c in d.commands if "--model_path=" in c]
    assert report.fingerprint["model"] == "Pixel 7" and report.cpus == [6, 7]
    assert report.ttft_ms.median > 0 and report.decode_ms_per_token.median > 0
    assert report.load_ms is not None and report.load_ms > 0
    assert any("--input_shapes=1x8," in c for c in runs)  # the prompt, below the bound
    assert any("--input_shapes=1x1," in c for c in runs)  # a decode step
    assert all("taskset c0 " in c for c in runs)
