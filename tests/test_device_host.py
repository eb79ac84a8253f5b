"""The host device: real ExecuTorch programs run in a real worker process."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from merino_mobile.device import open_device, probe
from merino_mobile.device.base import (
    BenchRequest,
    Fingerprint,
    InputSpec,
    MethodSpec,
    Samples,
    percentile,
    should_stop,
)
from merino_mobile.device.profiles import Measure, load_profile, read_profile
from merino_mobile.errors import UserError
from merino_mobile.workspace import Workspace

FAST = dict(warmup=1, min_repeats=3, max_repeats=5, max_seconds=0.5, timeout_s=60.0)


def host(tmp_path: Path, extra: str = "", worker: str = "forked"):
    """The host device; `worker` "fresh" starts every worker afresh, as off Linux."""
    path = tmp_path / "devices" / "host.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('name = "host"\ntransport = "local"\nthreads = 1\n' + extra)
    dev = open_device(read_profile(path))
    if worker == "fresh":
        dev.forked_runtimes = ()
    return dev


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.fixture(scope="module")
def pte(tmp_path_factory) -> Path:
    from merino_mobile.export.executorch import lower_to_pte

    x = torch.randn(1, 64)
    methods = {"small": (nn.Linear(64, 64), (x,), None),
               "big": (nn.Sequential(nn.Linear(64, 512), nn.Linear(512, 64)), (x,), None)}
    return lower_to_pte(methods, "fp32", tmp_path_factory.mktemp("pte") / "two.pte")


def request(*names: str, **kw) -> BenchRequest:
    specs = tuple(MethodSpec(n, (InputSpec((1, 64)),)) for n in names)
    return BenchRequest("executorch", specs, **(FAST | kw))


def test_stopping_rule():
    r = BenchRequest("executorch", (), min_repeats=3, max_repeats=10, target_spread=1.1,
                     max_seconds=100)
    assert not should_stop([1.0, 1.0], 0.1, r)  # too few
    assert should_stop([1.0, 1.0, 1.05], 0.1, r)  # tight
    assert not should_stop([1.0, 2.0, 3.0], 0.1, r)  # spread too large
    assert should_stop([1.0, 2.0, 3.0] * 4, 0.1, r)  # cap on repeats
    assert should_stop([1.0, 2.0, 3.0], 200, r)  # cap on time
    assert percentile([1, 2, 3, 4, 5], 50) == 3 and percentile([0, 10], 10) == 1
    # a minimum time: a tight spread is not enough before min_seconds of timing
    slow = BenchRequest("executorch", (), min_repeats=3, max_repeats=10, target_spread=1.1,
                        max_seconds=100, min_seconds=0.5)
    assert not should_stop([1.0, 1.0, 1.05], 0.1, slow)
    assert should_stop([1.0, 1.0, 1.05], 0.6, slow)
    assert should_stop([1.0] * 10, 0.1, slow)  # the repeat cap still ends it


def test_samples_time_at_least_min_seconds():
    """The worker's accumulator keeps sampling a steady method until min_seconds have passed."""
    req = BenchRequest("executorch", (), min_repeats=3, max_repeats=10**6, target_spread=1.5,
                       max_seconds=5.0, min_seconds=0.2)
    samples = Samples(req)
    t0 = time.perf_counter()
    while not samples.add(0.01):
        time.sleep(0.001)
    assert time.perf_counter() - t0 >= 0.2 - 1e-3
    assert len(samples.values) > 3
    # the device profile's settings reach the request
    m = Measure(min_seconds=0.25, max_repeats=99)
    r = m.request("onnxruntime", ())
    assert (r.runtime, r.min_seconds, r.max_repeats) == ("onnxruntime", 0.25, 99)


@pytest.mark.slow
def test_host_runs_executorch_in_a_worker(tmp_path, pte):
    dev = host(tmp_path)
    res = dev.benchmark(dev.prepare(pte), request("small", "big"))
    assert [r.name for r in res.results] == ["small", "big"]
    for r in res.results:
        assert r.ok, r.error
        assert 3 <= len(r.samples_ms) <= 5
        assert r.p10 <= r.median <= r.p90
    assert res.threads == 1  # the worker reports the threadpool size it really got


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["forked", "fresh"])
def test_each_benchmark_is_a_worker_of_its_own(tmp_path, pte, monkeypatch, worker):
    """An ExecuTorch worker on Linux is forked from the forkserver, which imported the runtime
    once; a fresh one is our own child. Either way each benchmark gets a new process, which
    runs in the caller's working directory of the moment (an artifact given relative to it)."""
    dev = host(tmp_path, worker=worker)
    pids: list[tuple[int, int]] = []

    def on_event(kind, method, pid, result=None):
        if kind == "start":
            pids.append((pid, parent_pid(pid)))

    handle = dev.prepare(pte)
    for _ in range(2):
        assert dev.benchmark(handle, request("small"), on_event=on_event)["small"].ok
    monkeypatch.chdir(pte.parent)
    relative = replace(handle, remote=pte.name)
    assert dev.benchmark(relative, request("small"), on_event=on_event)["small"].ok
    assert len({pid for pid, _ in pids}) == 3
    parents = {ppid for _, ppid in pids}
    if worker == "fresh":
        assert parents == {os.getpid()}
    else:
        assert len(parents) == 1 and os.getpid() not in parents


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["forked", "fresh"])
def test_peak_rss_is_the_workers_own_not_its_parents(tmp_path, pte, worker):
    """The parent holds 1.5 GB when it starts the worker (as a deploy does right after exporting a
    large model); Linux's ru_maxrss would report the parent's high-water mark for the worker."""
    ballast = bytearray(1536 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page: resident
    dev = host(tmp_path, worker=worker)
    res = dev.benchmark(dev.prepare(pte), request("small"))
    del ballast
    (r,) = res.results
    assert r.ok, r.error
    assert 10e6 < r.peak_rss_bytes < 1e9, r.peak_rss_bytes


@pytest.mark.slow
def test_instances_are_loaded_with_their_own_weights(tmp_path):
    """MethodSpec.instances > 1: the worker calls that many loads of the method in turn, each
    with its own packed weights (4 MB here), which is what keeps a profiled term's weights out of
    the caches. Methods of one loaded program would share them; the peak RSS tells."""
    from merino_mobile.export.executorch import lower_to_pte

    x = torch.randn(1, 1024)
    pte = lower_to_pte({"wide": (nn.Linear(1024, 1024, bias=False), (x,), None)}, "fp32",
                       tmp_path / "wide.pte")
    dev = host(tmp_path)
    handle = dev.prepare(pte)
    rss = {}
    for n in (1, 8):
        spec = MethodSpec("wide", (InputSpec((1, 1024)),), instances=n)
        (r,) = dev.benchmark(handle, BenchRequest("executorch", (spec,), **FAST)).results
        assert r.ok, r.error
        assert 3 <= len(r.samples_ms) <= 5
        rss[n] = r.peak_rss_bytes
    assert rss[8] - rss[1] > 7 * 4e6 * 0.9, rss


@pytest.mark.slow
def test_missing_method_fails_that_method_only(tmp_path, pte):
    dev = host(tmp_path)
    res = dev.benchmark(dev.prepare(pte), request("nope", "small"))
    assert not res["nope"].ok and "nope" in res["nope"].error
    assert res["small"].ok


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["forked", "fresh"])
def test_worker_crash_is_a_failed_point_and_the_rest_still_run(tmp_path, pte, worker):
    """A runtime dying by a signal (here SIGSEGV sent to the worker) fails only its method."""
    events = []

    def on_event(kind, method, pid, result=None):
        events.append((kind, method))
        if kind == "start" and method == "small":
            os.kill(pid, signal.SIGSEGV)

    dev = host(tmp_path, worker=worker)
    # an unreachable spread keeps each method timing for max_seconds: the signal lands mid-method
    req = request("small", "big", max_repeats=10**9, target_spread=1.0, max_seconds=2.0)
    res = dev.benchmark(dev.prepare(pte), req, on_event=on_event)
    assert not res["small"].ok
    assert "SIGSEGV" in res["small"].error and "small" in res["small"].error
    assert res["big"].ok
    assert ("failed", "small") in events and ("done", "big") in events


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["forked", "fresh"])
def test_hung_method_times_out(tmp_path, pte, worker):
    """The watchdog kills a worker that runs one method for longer than timeout_s."""
    dev = host(tmp_path, worker=worker)
    req = request("big", max_repeats=10**9, max_seconds=10**6, target_spread=1.0, timeout_s=2.0)
    res = dev.benchmark(dev.prepare(pte), req)
    assert not res["big"].ok and "timed out after 2s while running big" in res["big"].error


@pytest.mark.slow
def test_pinning_is_applied_and_recorded(tmp_path, pte):
    cpu = sorted(os.sched_getaffinity(0))[0]
    dev = host(tmp_path, f"cpus = [{cpu}]\n")
    res = dev.benchmark(dev.prepare(pte), request("small"))
    assert res.cpus == (cpu,) and res["small"].ok
    assert dev.fingerprint("executorch", "fp32").cpus == (cpu,)


def test_fingerprint_key_ignores_date_and_quant_only(tmp_path):
    dev = host(tmp_path)
    fp = dev.fingerprint("executorch", "fp32")
    assert fp.runtime_version == "1.5.1" and fp.threads == 1 and fp.cores == os.cpu_count()
    same = Fingerprint.from_json(fp.to_json() | {"date": "1999-01-01", "quant": "int8"})
    assert same.key == fp.key
    other = Fingerprint.from_json(fp.to_json() | {"threads": 4})
    assert other.key != fp.key and fp.mismatch(other) == ["threads: 1 != 4"]


def test_host_profile_ships_and_probes(tmp_path):
    prof = load_profile(Workspace.resolve(tmp_path), "host")
    assert prof.transport == "local" and prof.threads == 2
    p = probe(prof)
    assert p.reachable is True and "executorch 1.5.1" in p.detail


def test_profile_errors_name_the_problem(tmp_path):
    ws = Workspace.resolve(tmp_path)
    with pytest.raises(UserError, match="known: .*host"):
        load_profile(ws, "pixel99")
    bad = tmp_path / "devices" / "bad.toml"
    bad.parent.mkdir()
    bad.write_text("transport = 'local'\nthreads = [\n")
    with pytest.raises(UserError, match=r"bad\.toml: not valid TOML"):
        load_profile(ws, "bad")
    bad.write_text("transport = 'carrier-pigeon'\n")
    with pytest.raises(UserError, match="transport must be one of"):
        load_profile(ws, "bad")
    bad.write_text("transport = 'adb'\n[adb]\nadbkey = 'k'\n")
    with pytest.raises(UserError, match="serial"):
        load_profile(ws, "bad")
    bad.write_text("transport = 'local'\n[measure]\nwarmpu = 3\n")
    with pytest.raises(UserError, match=r"\[measure\] has unknown keys \['warmpu'\]"):
        load_profile(ws, "bad")
    bad.write_text("transport = 'local'\ncache_mb = '32M'\n")
    with pytest.raises(UserError, match="cache_mb must be a positive number of megabytes"):
        load_profile(ws, "bad")


def test_last_level_cache_from_the_profile_or_sysfs(tmp_path):
    from merino_mobile.device.profiles import host_cache_bytes

    # a sysfs cache folder as Linux lays it out (the real one is read below)
    for i, (kind, size) in enumerate([("Data", "32K"), ("Instruction", "64M"),
                                      ("Unified", "512K"), ("Unified", "16384K")]):
        d = tmp_path / "cache" / f"index{i}"
        d.mkdir(parents=True)
        (d / "type").write_text(kind + "\n")
        (d / "size").write_text(size + "\n")
    assert host_cache_bytes(tmp_path / "cache") == 16 << 20
    assert host_cache_bytes(tmp_path / "nowhere") == 0
    ws = Workspace.resolve(tmp_path)
    assert load_profile(ws, "host").cache_bytes() == host_cache_bytes()
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "phone.toml").write_text(
        "transport = 'adb'\ncache_mb = 8\n[adb]\nserial = 'X'\n")
    assert load_profile(ws, "phone").cache_bytes() == 8e6
    assert load_profile(ws, "pixel7").cache_bytes() == 0.0  # unknown: no model runs from cache


def test_adb_profile_without_backend_is_unknown(tmp_path):
    path = tmp_path / "phone.toml"
    path.write_text('transport = "adb"\ncpus = [6, 7]\n[adb]\naddress = "10.0.0.2:5555"\n')
    prof = read_profile(path)
    assert prof.cpu_mask == "0xc0" and prof.adb.address == "10.0.0.2:5555"
    try:
        import merino_mobile.device.android  # noqa: F401
    except ModuleNotFoundError:
        assert probe(prof).reachable is None
        assert "ADB backend not installed" in probe(prof).detail


@pytest.mark.slow
def test_host_runs_a_folder_of_onnx_models(tmp_path):
    """ONNX Runtime path: one .onnx per method; the KV cache inputs ONNX adds are zero-filled;
    a method with instances runs one session per instance."""
    from merino_mobile.export.onnx import to_onnx
    from merino_mobile.latency.grid import make_grid
    from merino_mobile.latency.micro import micro_model
    from merino_mobile.latency.store import Point

    space = tmp_path / "tiny.toml"
    space.write_text("schema_version = 1\nmax_blocks = 1\ndepth = [1, 2]\n"
                     "widths = [64]\nffn_ratios = [2.0]\nhead_dim = 32\nvocab = 256\n"
                     "context = 64\n")
    grid = make_grid(space, "full", [16], [])
    folder = tmp_path / "prog.onnx.d"
    specs = []
    for name, p in (("m0", Point("layer", "decode", width=64, ffn_ratio=2.0, heads=2,
                                 context=16)),
                    ("m1", Point("projection", "decode", width=64, width_out=128, context=1))):
        module, args, inputs = micro_model(p, grid)
        to_onnx(module, args, "fp32", folder / f"{name}.onnx")
        specs.append(MethodSpec(name, inputs, instances=3 if name == "m0" else 1))
    dev = host(tmp_path)
    handle = dev.prepare(folder)
    assert handle.runtime == "onnxruntime"
    res = dev.benchmark(handle, BenchRequest("onnxruntime", tuple(specs), **FAST))
    assert res["m0"].ok and res["m1"].ok, (res["m0"].error, res["m1"].error)


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["forked", "fresh"])
def test_a_program_the_runtime_cannot_load_fails_every_method_with_its_error(tmp_path, worker):
    """The worker's own stderr (here the runtime's exception) is what the failure quotes."""
    bad = tmp_path / "bad.pte"
    bad.write_bytes(b"not a program" * 100)
    dev = host(tmp_path, worker=worker)
    res = dev.benchmark(dev.prepare(bad), request("small", "big"))
    for r in res.results:
        assert not r.ok and r.error.startswith("runtime worker exited with code 1: "), r.error
        assert "RuntimeError" in r.error, r.error


@pytest.mark.slow
def test_a_fork_server_that_died_is_started_anew(tmp_path, pte):
    """The process the ExecuTorch workers are forked from is killed between two benchmarks (the
    system's out-of-memory killer, say): the next benchmark starts a new one and runs."""
    from merino_mobile.device.host import fork_server

    dev = host(tmp_path)
    handle = dev.prepare(pte)
    assert dev.benchmark(handle, request("small"))["small"].ok
    first = fork_server("executorch")
    first.proc.kill()
    first.proc.wait()
    assert dev.benchmark(handle, request("small"))["small"].ok
    assert fork_server("executorch").proc.pid != first.proc.pid
