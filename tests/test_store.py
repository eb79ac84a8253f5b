"""The profiling store: durable rows, no duplicates, drift bookkeeping, the profile lock."""

from __future__ import annotations

import subprocess
import sys

import pytest

from merino_mobile.device.base import Fingerprint, MethodResult
from merino_mobile.errors import UserError
from merino_mobile.latency.store import Point, ProfileLock, Store

FP = Fingerprint("host", "box", "cpu", 2, "Linux", "x86_64", "executorch", "1.5.1", 2, "fp32")


def test_rows_are_keyed_and_replaced_never_duplicated(tmp_path):
    store = Store.open(tmp_path)
    p = Point("layer", "decode", width=64, ffn_ratio=2.0, heads=2, context=16)
    store.record(FP.key, "executorch", "fp32", p, MethodResult("m0", (), "killed"), 2, (), "h")
    assert store.measured(FP.key, "executorch", "fp32") == set()
    store.record(FP.key, "executorch", "fp32", p, MethodResult("m0", (1.0, 2.0, 3.0)), 2, (), "h")
    rows = store.rows(FP.key, "executorch", "fp32")
    assert len(rows) == 1 and rows[0].ok and rows[0].median_ms == 2.0 and rows[0].samples == 3
    assert store.measured(FP.key, "executorch", "fp32") == {p.key}
    # another quantization or runtime is another table
    assert store.rows(FP.key, "executorch", "int8") == []
    store.close()
    # committed: a new connection (a new process after a crash) sees it
    assert Store.open(tmp_path).measured(FP.key, "executorch", "fp32") == {p.key}


def test_forget_since_returns_the_points_after_a_good_sentinel(tmp_path):
    store = Store.open(tmp_path)
    pts = [Point("head", width=w, vocab=256) for w in (64, 128, 192)]
    seqs = [store.record(FP.key, "executorch", "fp32", p, MethodResult("m", (1.0,)), 2, (), "h")
            for p in pts]
    again = store.forget_since(FP.key, "executorch", "fp32", seqs[0])
    assert again == pts[1:]
    assert store.measured(FP.key, "executorch", "fp32") == {pts[0].key}


def test_a_version_1_store_is_upgraded_in_place_and_keeps_its_rows(tmp_path):
    """A store written before points.per_call existed (schema 1, as the tool wrote it until
    bench version 3) opens, keeps its rows (per_call 1) and records new ones with per_call."""
    import sqlite3

    from merino_mobile.latency.store import _SCHEMA

    db = sqlite3.connect(tmp_path / "profile.db")
    db.executescript(_SCHEMA.replace(
        "    per_call INTEGER NOT NULL DEFAULT 1,  -- instances of the term one timed call ran\n",
        ""))
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    old = Point("head", width=64, vocab=256)
    db.execute("INSERT INTO points VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
               (FP.key, "executorch", "fp32", old.key, 1.0, 1.0, 1.0, "[1.0]", None, 2, "[]",
                "h", "then", 1))
    db.commit()
    db.close()
    store = Store.open(tmp_path)
    new = Point("head", width=128, vocab=256)
    store.record(FP.key, "executorch", "fp32", new, MethodResult("m", (2.0,)), 2, (), "h", 4)
    rows = store.rows(FP.key, "executorch", "fp32")
    assert [(r.point, r.per_call) for r in rows] == [(old, 1), (new, 4)]


def test_point_keys_are_canonical():
    a = Point("layer", "decode", width=64, ffn_ratio=2.0, heads=2, context=16)
    assert Point.from_key(a.key) == a
    assert a.label() == "layer[decode](width=64, ffn_ratio=2, heads=2, context=16)"


def test_fingerprint_survives_the_store(tmp_path):
    store = Store.open(tmp_path)
    store.save_fingerprint(FP)
    assert store.fingerprint(FP.key) == FP


def test_corrupt_database_is_a_clear_error(tmp_path):
    (tmp_path / "profile.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a usable profiling database"):
        Store.open(tmp_path)


def test_second_profile_of_a_device_is_refused(tmp_path):
    with ProfileLock(tmp_path, "host"):
        with pytest.raises(UserError, match="already being profiled"):
            ProfileLock(tmp_path, "host").__enter__()
        # another device is independent
        with ProfileLock(tmp_path, "pixel7"):
            pass
        # and another process is refused too (flock is per open file, across processes)
        code = ("import sys; from merino_mobile.latency.store import ProfileLock\n"
                "from merino_mobile.errors import UserError\n"
                f"try:\n    ProfileLock({str(tmp_path)!r}, 'host').__enter__()\n"
                "except UserError as e:\n    print(e); sys.exit(3)\n")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert p.returncode == 3 and "already being profiled" in p.stdout
    with ProfileLock(tmp_path, "host"):  # released on exit
        pass


def test_disk_full_while_recording_corrupts_nothing(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes writes fail like a full disk, in a subprocess."""
    store = Store.open(tmp_path)
    first = Point("head", width=64, vocab=256)
    store.record(FP.key, "executorch", "fp32", first, MethodResult("m", (1.0,)), 2, (), "h")
    store.close()
    code = f"""
import resource, signal, sys
from merino_mobile.device.base import Fingerprint, MethodResult
from merino_mobile.errors import UserError
from merino_mobile.latency.store import Point, Store
store = Store.open({str(tmp_path)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
size = (({str(tmp_path)!r} + "/profile.db-wal"), ({str(tmp_path)!r} + "/profile.db"))
import os
resource.setrlimit(resource.RLIMIT_FSIZE, (max(os.path.getsize(p) for p in size) + 1,) * 2)
try:
    for w in range(1000):
        store.record({FP.key!r}, "executorch", "fp32", Point("layer", width=w + 1, context=16),
                     MethodResult("m", tuple(float(i) for i in range(200))), 2, (), "h" * 500)
except UserError as e:
    print(e); sys.exit(3)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 3, p.stderr
    assert "disk full while writing" in p.stdout and "rerun" in p.stdout
    store = Store.open(tmp_path)
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert first.key in store.measured(FP.key, "executorch", "fp32")
