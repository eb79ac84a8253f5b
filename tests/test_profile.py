"""Real profiling of a tiny grid on this host, with the real exporter and ExecuTorch runtime."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from merino_mobile.device.profiles import host_cache_bytes
from merino_mobile.errors import UserError
from merino_mobile.latency.grid import make_grid
from merino_mobile.latency.profile import run_profile
from merino_mobile.latency.programs import batches
from merino_mobile.latency.store import Point, ProfileLock, Store
from merino_mobile.latency.table import load_lut, read_lut
from merino_mobile.workspace import Workspace

SPACE = """schema_version = 1
max_blocks = 1
depth = [1, 2]
widths = [64, 128]
ffn_ratios = [2.0]
head_dim = 32
vocab = 256
context = 64
"""
# threads 1 and few repeats: seconds, not minutes; an unreachable spread makes each point take
# max_seconds, so a test can kill the run while it is measuring
HOST = """name = "host"
transport = "local"
threads = 1
[sentinel]
every = 100
threshold = 10.0
[measure]
warmup = 1
min_repeats = 3
max_repeats = {repeats}
target_spread = {spread}
max_seconds = {seconds}
timeout_s = 60.0
passes = {passes}
"""


def workspace(root: Path, spread: float = 1.5, seconds: float = 0.2,
              repeats: int = 20, passes: int = 1) -> Workspace:
    (root / "search").mkdir(parents=True, exist_ok=True)
    (root / "devices").mkdir(exist_ok=True)
    (root / "search" / "tiny.toml").write_text(SPACE)
    (root / "devices" / "host.toml").write_text(HOST.format(spread=spread, seconds=seconds,
                                                                  repeats=repeats, passes=passes))
    return Workspace.resolve(root)


def tiny_grid(ws: Workspace):
    return make_grid(ws.search / "tiny.toml", "full", contexts=[16], prompts=[])


def stored(ws: Workspace) -> list[str]:
    db = sqlite3.connect(ws.state / "profile.db")
    return [r[0] for r in db.execute("SELECT point FROM points WHERE error IS NULL")]


def stored_so_far(ws: Workspace) -> int:
    """Points a running profile has stored; 0 before its store has a schema.

    The file exists from the moment the profile opens it, a moment before its
    tables do, so a reader polling it may find no `points` table yet.
    """
    if not (ws.state / "profile.db").exists():
        return 0
    try:
        return len(stored(ws))
    except sqlite3.OperationalError:
        return 0


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    ws = workspace(tmp_path_factory.mktemp("ws"))
    report = run_profile(ws, "host", grid=tiny_grid(ws))
    return ws, report


def test_grid_from_the_space(tmp_path):
    ws = workspace(tmp_path)
    g = tiny_grid(ws)
    terms = sorted(p.term for p in g.points())
    assert terms == ["embedding"] * 2 + ["fixed", "head", "head", "layer", "layer", "null",
                                         "projection", "projection"]
    assert len(batches(g.points(), g)) == 1  # all ten in one multi-method program
    default = make_grid(Path(__file__).parents[1] / "search" / "default.toml", "quick")
    assert default.widths[0] == 128 and default.widths[-1] == 1024 and len(default.ffn_ratios) == 3
    assert default.contexts == (128, 512)
    with pytest.raises(UserError, match="unknown grid"):
        make_grid(ws.search / "tiny.toml", "medium")


def test_decode_micro_models_stream_their_weights_through_copies():
    from torch import nn

    from merino_mobile.latency.micro import (
        MAX_COPIES,
        STREAM_BYTES,
        copies,
        micro_model,
        weight_bytes,
    )
    from merino_mobile.model import DecoderLayer

    grid = make_grid(Path(__file__).parents[1] / "search" / "default.toml", "quick")
    small = Point("layer", "decode", width=128, ffn_ratio=1.0, heads=2, context=16)
    mid = Point("layer", "decode", width=768, ffn_ratio=4.0, heads=12, context=16)
    wide = Point("layer", "decode", width=1024, ffn_ratio=4.0, heads=16, context=16)
    assert copies(small, "int8") == MAX_COPIES  # 0.2 MB a copy: capped
    n = copies(mid, "fp32")  # 28 MB a copy: as many as it takes to read STREAM_BYTES
    assert 1 < n < MAX_COPIES and (n - 1) * weight_bytes(mid, "fp32") < STREAM_BYTES
    assert copies(wide, "fp32") == 1  # 50 MB: one copy already streams
    assert copies(Point("layer", "prefill", width=128, ffn_ratio=1.0, heads=2, context=16),
                  "int8") == 1  # prefill is compute-bound
    module, _, _ = micro_model(small, grid, "int8")
    layers = [m for m in module.modules() if isinstance(m, DecoderLayer)]
    assert len(layers) == MAX_COPIES and len({id(m.attn.q.weight) for m in layers}) == MAX_COPIES
    head, _, _ = micro_model(Point("head", "decode", width=128, vocab=256), grid, "int8")
    assert sum(isinstance(m, nn.Linear) for m in head.modules()) == MAX_COPIES


def test_a_replicating_device_gets_one_instance_per_method_and_loads_the_copies(tmp_path):
    """The host loads copies itself: each method holds one instance and asks for `copies`."""
    from merino_mobile.latency.micro import MAX_INSTANCES, copies, in_program, micro_model
    from merino_mobile.latency.programs import program_hash
    from merino_mobile.model import DecoderLayer

    grid = make_grid(Path(__file__).parents[1] / "search" / "default.toml", "quick")
    small = Point("layer", "decode", width=128, ffn_ratio=1.0, heads=2, context=16)
    assert copies(small, "int8", replicated=True) == MAX_INSTANCES
    assert in_program(small, "int8", True) == 1 and in_program(small, "int8", False) > 1
    module, _, _ = micro_model(small, grid, "int8", in_program(small, "int8", True))
    assert sum(isinstance(m, DecoderLayer) for m in module.modules()) == 1
    # the program's content differs (one instance or several), so its cache entry does too
    assert program_hash((small,), grid, "executorch", "int8", True) != \
        program_hash((small,), grid, "executorch", "int8", False)


@pytest.mark.slow
def test_tiny_profile_measures_everything_and_writes_the_lut(profiled):
    ws, report = profiled
    # ten points, and the hot twins of the six decode terms with weights timed as copies
    assert report.points == 16 and report.measured == 16 and report.failed == []
    # one program (the sentinel is timed from it), complete: no temporary file left
    assert [p.suffix for p in (ws.state / "cache").iterdir()] == [".pte"]
    lut = read_lut(Path(report.lut))
    assert Path(report.lut) == ws.devices / "host" / "lut-executorch-fp32.json"
    assert lut.fingerprint.threads == 1 and lut.fingerprint.runtime_version == "1.5.1"
    # the table answers the solver's questions, including shapes off the grid
    assert lut.layer(128, 2.0, 4, 16) > 0 and lut.layer(96, 2.0, 3, 16) > 0
    assert lut.fixed("decode") > 0
    # a 128x256 head runs in microseconds, inside the null call's own spread, so its term (the
    # null call subtracted, clamped at 0) may read 0 on a busy host; the timed calls may not
    heads = [r for r in Store.open(ws.state).rows(lut.fingerprint.key, "executorch", "fp32")
             if r.point.term == "head" and not r.point.hot]
    assert {r.point.width for r in heads} == {64, 128} and all(r.median_ms > 0 for r in heads)
    assert lut.head(128, 256) >= 0
    assert load_lut(ws, "host", "executorch", "fp32").layer(64, 2.0, 2, 16) == \
        lut.layer(64, 2.0, 2, 16)
    # the hot twins: a surface of their own, exact on its points, beside the usual one
    hot = {p.key: ms for p, ms in lut.entries["layer"]["decode"] if p.hot}
    assert lut.has_hot and len(hot) == 2
    key = Point("layer", "decode", width=128, ffn_ratio=2.0, heads=4, context=16, hot=True).key
    assert lut.layer(128, 2.0, 4, 16, hot=True) == hot[key] != lut.layer(128, 2.0, 4, 16)
    # every decode term with weights has its twin (a hot 64-wide projection may time below the
    # null call, so its term is 0: no sign is asserted)
    assert {(t, p.width) for t, phases in lut.entries.items() for p, _ in phases["decode"]
            if p.hot} == {("layer", 64), ("layer", 128), ("head", 64), ("head", 128),
                          ("projection", 64), ("projection", 128)}
    assert read_lut(Path(report.lut)).layer(128, 2.0, 4, 16, hot=True) == hot[key]
    assert lut.cache_bytes == host_cache_bytes()  # this host's, from sysfs
    # every stored point was timed with the device's thread count
    rows = Store.open(ws.state).rows(lut.fingerprint.key, "executorch", "fp32")
    assert {r.threads for r in rows} == {1} and all(3 <= r.samples <= 20 for r in rows)


@pytest.mark.slow
def test_rerun_measures_nothing_twice(profiled):
    ws, first = profiled
    again = run_profile(ws, "host", grid=tiny_grid(ws))
    assert again.skipped == 16 and again.measured == 0 and again.export_s == 0


@pytest.mark.slow
def test_passes_read_every_point_again_and_a_rerun_adds_only_missing_readings(profiled,
                                                                               tmp_path):
    src, _ = profiled
    ws = workspace(tmp_path, passes=2)
    shutil.copytree(src.state / "cache", ws.state / "cache")
    report = run_profile(ws, "host", grid=tiny_grid(ws))
    # the hot twins are read in the first pass only
    assert report.points == 26 and report.measured == 26 and report.export_s < 5
    keys = stored(ws)
    assert len(keys) == len(set(keys)) == 26
    assert sorted(Point.from_key(k).reading for k in keys) == [0] * 16 + [1] * 10
    assert {Point.from_key(k).shape.key for k in keys} == set(stored(src))
    # the table holds each point once (the null call is subtracted, not stored)
    lut = read_lut(Path(report.lut))
    assert sum(len(pts) for phases in lut.entries.values() for pts in phases.values()) == 15
    # a third pass asked later: only the new readings are timed
    ws = workspace(tmp_path, passes=3)
    more = run_profile(ws, "host", grid=tiny_grid(ws))
    assert (more.points, more.skipped, more.measured) == (36, 26, 10)
    assert len(set(stored(ws))) == 36


@pytest.mark.slow
def test_worker_crash_fails_one_point_and_a_rerun_fills_it(profiled, tmp_path):
    src, _ = profiled
    # each point times for max_seconds, so the signal lands while the chosen method runs
    ws = workspace(tmp_path, spread=1.0, seconds=0.5, repeats=10**6)
    shutil.copytree(src.state / "cache", ws.state / "cache")  # programs are content-addressed

    crashed = []

    def crash(kind, method, pid):
        # the first projection (once: its hot twin is timed later from the same method)
        if kind == "start" and method == "m6" and not crashed:
            crashed.append(pid)
            os.kill(pid, signal.SIGSEGV)

    report = run_profile(ws, "host", grid=tiny_grid(ws), on_event=crash)
    assert report.export_s < 5  # the cached program was reused, not exported again
    assert report.measured == 15 and len(report.failed) == 1
    assert "projection" in report.failed[0] and "SIGSEGV" in report.failed[0]
    assert read_lut(Path(report.lut)).failed == report.failed
    fixed = run_profile(ws, "host", grid=tiny_grid(ws))
    assert fixed.measured == 1 and fixed.failed == [] and fixed.skipped == 15


@pytest.mark.slow
def test_kill_9_mid_profile_then_resume_gives_the_same_points(profiled, tmp_path):
    src, _ = profiled
    # each point times for 0.4 s: the run is killed while it is measuring
    ws = workspace(tmp_path, spread=1.0, seconds=0.4, repeats=10**6)
    shutil.copytree(src.state / "cache", ws.state / "cache")
    cmd = [sys.executable, "-c", "from merino_mobile.cli import main; main()", "profile",
           "--device", "host", "--space", "tiny", "--grid", "full", "--context", "16",
           "--prompt", "0", "--passes", "1", "--anchors", "0", "--workspace", str(ws.root),
           "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if stored_so_far(ws) >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = stored(ws)
    assert 3 <= len(partial) < 16, "the run was not killed mid-profile"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["skipped"] >= len(partial) and report["failed"] == []
    points = stored(ws)
    assert len(points) == len(set(points)) == 16
    assert set(points) == set(stored(src))


def test_a_second_profile_of_the_device_is_refused(tmp_path):
    ws = workspace(tmp_path)
    with ProfileLock(ws.state, "host"), pytest.raises(UserError, match="already being profiled"):
        run_profile(ws, "host", grid=tiny_grid(ws))


def test_unknown_device_and_runtime(tmp_path):
    ws = workspace(tmp_path)
    with pytest.raises(UserError, match="known: .*host"):
        run_profile(ws, "pixel99", grid=tiny_grid(ws))
    with pytest.raises(UserError, match="unknown runtime"):
        run_profile(ws, "host", "tflite", grid=tiny_grid(ws))
