"""The durable store of profiling measurements: SQLite at `<workspace>/.merino-mobile/profile.db`.

One row per finished measurement point (per reading, when a profile reads points in several
passes), committed the moment it is measured, keyed by (device fingerprint key, runtime,
quantization, point key). WAL mode keeps readers (a `lut` export)
from blocking the writer and makes every commit crash-safe, so `profile` interrupted at any moment
(Ctrl-C, kill -9, a lost device, a full disk) loses at most the point being measured and a rerun
measures only what is missing. The unique key makes a duplicate impossible, not merely unlikely.

Failed points (the runtime crashed, raised, timed out) are stored too, with the reason, so the
summary can name them; a rerun tries them again.

Whole-model measurements live in the same file (`measurements`): every bench of an exported
model on a device (`merino_mobile.deploy.bench`) is one row, committed at once like a point, with
the card, runtime, quantization, lengths, fingerprint key, the raw decode and TTFT samples, the
artifact and what the device's table predicted for it then. They are the data the calibration
(`merino_mobile.latency.calibration`) is fitted on; `Store.measurements` lists them.

`ProfileLock` keeps two `profile` runs on one device from interleaving: an exclusive
`fcntl.flock` on `.merino-mobile/profile-<device>.lock`, released by the kernel when the holder
exits, however it exits.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from merino_mobile.device.base import Fingerprint, MethodResult
from merino_mobile.errors import UserError
from merino_mobile.files import utc_now

# 2 added points.per_call (version 1 files are upgraded in place). The measurements table came
# later without a bump: it is created where missing, and a reader that does not know it ignores it.
SCHEMA_VERSION = 2
TERMS = ("fixed", "null", "layer", "projection", "embedding", "head")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fingerprints (key TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    fingerprint TEXT NOT NULL,
    runtime TEXT NOT NULL,
    quant TEXT NOT NULL,
    point TEXT NOT NULL,          -- Point.key: canonical JSON of term, phase and shape
    median_ms REAL,
    p10_ms REAL,
    p90_ms REAL,
    samples_ms TEXT NOT NULL,     -- JSON list
    error TEXT,                   -- NULL for a good measurement
    threads INTEGER NOT NULL,
    cpus TEXT NOT NULL,           -- JSON list, [] when not pinned
    artifact TEXT NOT NULL,       -- content hash of the exported program it came from
    measured_at TEXT NOT NULL,
    seq INTEGER NOT NULL,         -- measurement order, for re-measuring after a drift
    per_call INTEGER NOT NULL DEFAULT 1,  -- instances of the term one timed call ran
    PRIMARY KEY (fingerprint, runtime, quant, point)
);
CREATE TABLE IF NOT EXISTS sentinels (
    fingerprint TEXT NOT NULL,
    runtime TEXT NOT NULL,
    quant TEXT NOT NULL,
    median_ms REAL NOT NULL,
    seq INTEGER NOT NULL,
    measured_at TEXT NOT NULL,
    good INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,         -- the device profile's name
    fingerprint TEXT NOT NULL,    -- Fingerprint.key (its JSON in fingerprints)
    runtime TEXT NOT NULL,
    quant TEXT NOT NULL,
    card_name TEXT,
    card TEXT,                    -- the card's JSON; NULL when the artifact came without one
    prompt INTEGER NOT NULL,
    generate INTEGER NOT NULL,
    context INTEGER NOT NULL,     -- the decode context: the static KV cache attended per step
    cache_len INTEGER,
    threads INTEGER NOT NULL,
    rounds INTEGER NOT NULL,      -- separate benches pooled into this one
    decode_samples_ms TEXT NOT NULL,  -- JSON list: ms per token, one per timed run
    ttft_samples_ms TEXT NOT NULL,    -- JSON list: one per timed prefill
    decode_median_ms REAL NOT NULL,
    ttft_median_ms REAL NOT NULL,
    artifact TEXT NOT NULL,       -- its path when measured
    artifact_sha256 TEXT NOT NULL,
    predicted_ms REAL,            -- the raw table's decode prediction then; NULL: no table
    calibrated_ms REAL,           -- the calibrated one; NULL: no calibration applied
    lut TEXT,                     -- the table file predicted from
    tag TEXT NOT NULL,            -- what measured it: bench, side-by-side, ...
    measured_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS measurements_of ON measurements (fingerprint, runtime, quant);
"""


@dataclass(frozen=True)
class Point:
    """One micro-benchmark: a LUT term at one shape and phase.

    layer: width, ffn_ratio, heads, context; projection: width, width_out, context;
    embedding: width, vocab, context; head: width, vocab; fixed/null: context.
    For decode, `context` is the KV-cache length attended; for prefill, the prompt length.
    `reading` numbers the profile's passes over the grid (0, the first, is left out of the key):
    each pass times every point once more, and the table takes the median of the readings.
    `hot` (decode terms with weights, on a device that `replicates`): the same micro-benchmark
    with one loaded instance called again and again, so its weights stay in the caches, the way
    a whole model small enough to fit in them runs (left out of the key when False).
    A layer of another kind than version 1's (`latency.predict.LayerKind`) says so in `ffn`
    (its FFN kind), `kv_heads` (its K/V heads), `norm` and `nobias`; each is empty for a version
    1 layer (GELU, multi-head, LayerNorm, biases) and, like every empty field, left out of the
    key, so the points of version 1 spaces keep their keys.
    """

    term: str
    phase: str = "decode"
    width: int = 0
    ffn_ratio: float = 0.0
    heads: int = 0
    context: int = 0
    width_out: int = 0
    vocab: int = 0
    reading: int = 0
    hot: bool = False
    ffn: str = ""
    kv_heads: int = 0
    norm: str = ""
    nobias: bool = False

    @property
    def shape(self) -> Point:
        """The point itself, whichever reading of it this is."""
        return replace(self, reading=0)

    @property
    def key(self) -> str:
        d = {k: v for k, v in asdict(self).items() if v or k in ("term", "phase")}
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_key(cls, key: str) -> Point:
        return cls(**json.loads(key))

    def label(self) -> str:
        shape = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in asdict(self).items()
                          if v and k not in ("term", "phase", "reading", "hot"))
        again = f" #{self.reading + 1}" if self.reading else ""
        hot = ", hot" if self.hot else ""
        return f"{self.term}[{self.phase}{hot}]({shape}){again}"


@dataclass(frozen=True)
class Row:
    """A stored measurement (or failure) of one point."""

    point: Point
    median_ms: float | None
    p10_ms: float | None
    p90_ms: float | None
    samples: int
    error: str | None
    threads: int
    cpus: tuple[int, ...]
    measured_at: str
    seq: int
    per_call: int = 1  # instances of the term one timed call ran

    @property
    def ok(self) -> bool:
        return self.error is None and self.median_ms is not None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.point), "median_ms": self.median_ms, "p10_ms": self.p10_ms,
                "p90_ms": self.p90_ms, "samples": self.samples, "error": self.error}


@dataclass(frozen=True)
class Measurement:
    """One whole model benched on a device: what ran, how, the raw samples, and the prediction
    the device's table made for it at the time (None when there was no usable table).

    `context` is the decode context the step attends (the artifact's static KV cache,
    `cache_len`, else prompt + generate); `predicted_ms` the raw table's decode prediction at
    it, `calibrated_ms` the calibrated one when a calibration applied. `id` is the store's (0
    before it is recorded).
    """

    device: str
    fingerprint: str
    runtime: str
    quant: str
    card_name: str | None
    card: dict[str, Any] | None
    prompt: int
    generate: int
    context: int
    cache_len: int | None
    threads: int
    rounds: int
    decode_samples_ms: tuple[float, ...]
    ttft_samples_ms: tuple[float, ...]
    decode_median_ms: float
    ttft_median_ms: float
    artifact: str
    artifact_sha256: str
    predicted_ms: float | None = None
    calibrated_ms: float | None = None
    lut: str | None = None
    tag: str = "bench"
    measured_at: str = ""
    id: int = 0

    @property
    def slow_ms(self) -> float:
        """The decode median this measurement is judged by: when its rounds ran at two speeds,
        the median of the slow rounds' runs (`bench.slow_runs`, as `design --verify` judges a
        budget), else `decode_median_ms`. The calibration fits it."""
        from merino_mobile.deploy.bench import slow_runs
        from merino_mobile.device.base import percentile

        if self.rounds < 2 or not self.decode_samples_ms:
            return self.decode_median_ms
        repeat = len(self.decode_samples_ms) // self.rounds
        if repeat * self.rounds != len(self.decode_samples_ms):
            return self.decode_median_ms  # rounds of unequal runs: not split
        runs, speeds = slow_runs(self.decode_samples_ms, repeat)
        return percentile(runs, 50) if speeds["speeds"] == 2 else self.decode_median_ms

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"decode_samples_ms": list(self.decode_samples_ms),
                               "ttft_samples_ms": list(self.ttft_samples_ms)}


_MEASUREMENT_COLUMNS = ("device", "fingerprint", "runtime", "quant", "card_name", "card",
                        "prompt", "generate", "context", "cache_len", "threads", "rounds",
                        "decode_samples_ms", "ttft_samples_ms", "decode_median_ms",
                        "ttft_median_ms", "artifact", "artifact_sha256", "predicted_ms",
                        "calibrated_ms", "lut", "tag", "measured_at")


def _measurement(row: tuple[Any, ...]) -> Measurement:
    d = dict(zip(("id", *_MEASUREMENT_COLUMNS), row, strict=True))
    d["card"] = json.loads(d["card"]) if d["card"] is not None else None
    for k in ("decode_samples_ms", "ttft_samples_ms"):
        d[k] = tuple(float(v) for v in json.loads(d[k]))
    return Measurement(**d)


class Store:
    """Measurements of every device, runtime and quantization profiled in one workspace."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across crashes
            self.db.executescript(_SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                            (str(SCHEMA_VERSION),))
            self._upgrade()
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path}: not a usable profiling database ({e}); move it away "
                            f"and rerun `merino-mobile profile` to measure again") from None
        version = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version and int(version[0]) != SCHEMA_VERSION:
            raise UserError(f"{self.path}: schema_version {version[0]} is not supported (this "
                            f"version reads {SCHEMA_VERSION})")

    def _upgrade(self) -> None:
        """Version 1 -> 2: add points.per_call. Version 1 rows are from older micro-benchmarks
        (another BENCH_VERSION, so another fingerprint key): kept, never mixed with new ones."""
        (version,) = self.db.execute(
            "SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if int(version) == 1:
            with self._write() as db:
                db.execute("ALTER TABLE points ADD COLUMN per_call INTEGER NOT NULL DEFAULT 1")
                db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")

    @classmethod
    def open(cls, state_dir: Path) -> Store:
        """The store of a workspace's private state folder (`Workspace.state`)."""
        return cls(Path(state_dir) / "profile.db")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction; a full disk rolls it back and says so (nothing half-written)."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if self.db.in_transaction:
                # SQLite may have rolled back already; the WAL keeps the file consistent
                with suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            # ENOSPC reads "database or disk is full", a file-size limit "disk I/O error"
            if "full" in str(e) or "I/O" in str(e):
                raise UserError(f"disk full while writing {self.path} ({e}); every point "
                                f"measured before is safe: free some space and rerun to "
                                f"continue") from None
            raise

    def save_fingerprint(self, fp: Fingerprint) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO fingerprints VALUES (?, ?)",
                       (fp.key, json.dumps(fp.to_json())))

    def fingerprint(self, key: str) -> Fingerprint | None:
        row = self.db.execute("SELECT json FROM fingerprints WHERE key=?", (key,)).fetchone()
        return Fingerprint.from_json(json.loads(row[0])) if row else None

    def _next_seq(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM points").fetchone()
        return int(row[0]) + 1

    def record(self, fp_key: str, runtime: str, quant: str, point: Point, result: MethodResult,
               threads: int, cpus: Iterable[int], artifact: str, per_call: int = 1) -> int:
        """Store one finished point (replacing an earlier failure or a drifted value); its seq.
        `per_call`: instances of the term in the timed method (the table divides by it)."""
        ok = result.ok
        with self._write() as db:
            seq = self._next_seq(db)
            db.execute(
                "INSERT OR REPLACE INTO points VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (fp_key, runtime, quant, point.key,
                 result.median if ok else None, result.p10 if ok else None,
                 result.p90 if ok else None, json.dumps(list(result.samples_ms)),
                 None if ok else (result.error or "no samples"), threads,
                 json.dumps(list(cpus)), artifact, utc_now(), seq, int(per_call)))
        return seq

    def rows(self, fp_key: str, runtime: str, quant: str) -> list[Row]:
        """Every stored point of one (device fingerprint, runtime, quantization), in order."""
        cur = self.db.execute(
            "SELECT point, median_ms, p10_ms, p90_ms, samples_ms, error, threads, cpus, "
            "measured_at, seq, per_call FROM points WHERE fingerprint=? AND runtime=? AND "
            "quant=? ORDER BY seq", (fp_key, runtime, quant))
        return [Row(Point.from_key(p), med, p10, p90, len(json.loads(s)), err, th,
                    tuple(json.loads(c)), at, seq, pc)
                for p, med, p10, p90, s, err, th, c, at, seq, pc in cur]

    def measured(self, fp_key: str, runtime: str, quant: str) -> set[str]:
        """Keys of the points measured successfully (what a rerun skips)."""
        cur = self.db.execute(
            "SELECT point FROM points WHERE fingerprint=? AND runtime=? AND quant=? "
            "AND error IS NULL", (fp_key, runtime, quant))
        return {r[0] for r in cur}

    def forget_since(self, fp_key: str, runtime: str, quant: str, seq: int) -> list[Point]:
        """Drop the points measured after `seq` (a drifted sentinel); returns them to re-measure."""
        with self._write() as db:
            cur = db.execute(
                "SELECT point FROM points WHERE fingerprint=? AND runtime=? AND quant=? "
                "AND seq>?", (fp_key, runtime, quant, seq))
            points = [Point.from_key(r[0]) for r in cur]
            db.execute("DELETE FROM points WHERE fingerprint=? AND runtime=? AND quant=? "
                       "AND seq>?", (fp_key, runtime, quant, seq))
        return points

    def record_sentinel(self, fp_key: str, runtime: str, quant: str, median_ms: float,
                        good: bool) -> None:
        with self._write() as db:
            seq = self._next_seq(db) - 1
            db.execute("INSERT INTO sentinels VALUES (?,?,?,?,?,?,?)",
                       (fp_key, runtime, quant, median_ms, seq, utc_now(), int(good)))

    def sentinels(self, fp_key: str, runtime: str, quant: str) -> list[tuple[float, int, bool]]:
        """(median_ms, seq, good) of every sentinel measurement, oldest first."""
        cur = self.db.execute(
            "SELECT median_ms, seq, good FROM sentinels WHERE fingerprint=? AND runtime=? "
            "AND quant=? ORDER BY rowid", (fp_key, runtime, quant))
        return [(m, s, bool(g)) for m, s, g in cur]


    # -- whole-model measurements --------------------------------------------------------------

    def record_measurement(self, m: Measurement) -> int:
        """Store one whole-model measurement, committed before this returns; its id."""
        if not m.decode_samples_ms or not all(
                math.isfinite(v) and v > 0 for v in (*m.decode_samples_ms, *m.ttft_samples_ms)):
            raise ValueError(f"a whole-model measurement needs positive, finite samples; got "
                             f"decode {list(m.decode_samples_ms)}, ttft {list(m.ttft_samples_ms)}")
        values = asdict(m) | {
            "card": json.dumps(m.card, sort_keys=True) if m.card is not None else None,
            "decode_samples_ms": json.dumps(list(m.decode_samples_ms)),
            "ttft_samples_ms": json.dumps(list(m.ttft_samples_ms)),
            "measured_at": m.measured_at or utc_now()}
        with self._write() as db:
            cur = db.execute(
                f"INSERT INTO measurements ({', '.join(_MEASUREMENT_COLUMNS)}) VALUES "
                f"({', '.join('?' * len(_MEASUREMENT_COLUMNS))})",
                tuple(values[c] for c in _MEASUREMENT_COLUMNS))
            new_id = cur.lastrowid
        assert new_id is not None
        return int(new_id)

    def measurements(self, *, device: str | None = None, fingerprint: str | None = None,
                     runtime: str | None = None, quant: str | None = None,
                     ids: Iterable[int] | None = None) -> list[Measurement]:
        """The stored whole-model measurements, oldest first, of one device (profile name),
        fingerprint key, runtime and quantization (each None: any), or exactly `ids`."""
        where, args = [], []
        for col, value in (("device", device), ("fingerprint", fingerprint),
                           ("runtime", runtime), ("quant", quant)):
            if value is not None:
                where.append(f"{col}=?")
                args.append(value)
        if ids is not None:
            wanted = sorted(set(ids))
            where.append(f"id IN ({', '.join('?' * len(wanted))})" if wanted else "0")
            args += wanted
        sql = (f"SELECT id, {', '.join(_MEASUREMENT_COLUMNS)} FROM measurements"
               + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id")
        return [_measurement(r) for r in self.db.execute(sql, args)]

    def measured_devices(self) -> list[str]:
        """The device names that have whole-model measurements, sorted."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT device FROM measurements ORDER BY device")]


def read_measurements(state_dir: Path, **filters: Any) -> list[Measurement]:
    """`Store.measurements(**filters)` of a workspace's state folder, without creating a store
    where there is none (a workspace that never measured anything has no measurements)."""
    path = Path(state_dir) / "profile.db"
    if not path.is_file():
        return []
    store = Store(path)
    try:
        return store.measurements(**filters)
    finally:
        store.close()


class ProfileLock:
    """Exclusive right to profile one device in a workspace (see the module docstring)."""

    def __init__(self, state_dir: Path, device: str) -> None:
        self.path = Path(state_dir) / f"profile-{device}.lock"
        self.fd: int | None = None

    def __enter__(self) -> ProfileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            device = self.path.stem.removeprefix("profile-")
            raise UserError(f"device {device!r} is already being profiled in this workspace "
                            f"(pid {holder}, lock {self.path}); wait for it to finish, it "
                            f"stores every point, then rerun") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None
