"""Device profiles: `devices/<name>.toml`, one per device a user measures on.

A profile says how to reach the device and how to run on it (a phone's looks like this):

    schema_version = 1
    name = "pixel7"
    description = "Google Pixel 7 (Tensor G2), over ADB"
    transport = "adb"                  # "local" (this host) | "adb"
    runtimes = ["executorch", "onnxruntime"]
    threads = 2                        # runtime threads (XNNPACK threadpool, ORT intra-op)
    cpus = [6, 7]                      # pin to these cores (big cores); [] = no pinning
    cache_mb = 8                       # last-level cache; this host reads it from sysfs

    [adb]                              # only for transport = "adb"
    serial = "28291FDH2000RS"          # USB serial, or
    address = "192.168.1.20:5555"      # adbd over TCP
    adbkey = "~/.android/adbkey"
    remote_dir = "/data/local/tmp/merino-mobile"
    runner = "executor_runner"         # extra keys are kept in `adb.extra` for the backend

    [cooldown]
    max_temp_c = 45.0                  # wait before each batch until the hottest zone is below
    wait_s = 5.0                       # poll interval while cooling
    max_wait_s = 300.0                 # then measure anyway and record the temperature
    pause_s = 0.0                      # fixed pause between batches

    [sentinel]
    every = 20                         # re-measure the sentinel point every N points
    threshold = 0.10                   # drift that invalidates points since the last good one

    [measure]                          # see merino_mobile.device.base.BenchRequest
    warmup = 3
    min_repeats = 5
    max_repeats = 50
    target_spread = 1.15
    max_seconds = 2.0
    timeout_s = 120.0
    min_seconds = 0.0                  # time at least this long, whatever the spread
    passes = 1                         # `profile` reads every point this many times, pass after
                                       # pass; the table takes the median (the
                                       # slow readings' at two speeds)

Every table and key except transport is optional (name defaults to the file's stem). Reading is
strict, as for cards (`merino_mobile.workspace.Fields`): integers are TOML integers, seconds and
ratios finite numbers within the ranges in `_LIMITS` (no nan or inf: an infinite wait would hang a
run), flags booleans, strings strings; unknown keys are refused with the known ones, except under
[adb], whose extra keys go to the backend (`auth_timeout_s`, `onnxruntime_perf_test`,
`thermal_zones`, `expect_model` are checked here; others only for finite numbers). Errors name
the file, the key and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from merino_mobile.device.backends import BACKENDS
from merino_mobile.device.base import BenchRequest, MethodSpec, StopRule
from merino_mobile.errors import UserError
from merino_mobile.formats import PROFILED_RUNTIMES, RUNTIMES
from merino_mobile.workspace import Fields, Workspace, parse_toml, read_text

SCHEMA_VERSION = 1
TRANSPORTS = tuple(BACKENDS)


@dataclass(frozen=True)
class AdbSettings:
    serial: str | None = None
    address: str | None = None
    adbkey: str = "~/.android/adbkey"
    remote_dir: str = "/data/local/tmp/merino-mobile"
    runner: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Cooldown:
    max_temp_c: float | None = None
    wait_s: float = 5.0
    max_wait_s: float = 300.0
    pause_s: float = 0.0


@dataclass(frozen=True)
class Sentinel:
    every: int = 20
    threshold: float = 0.10


@dataclass(frozen=True)
class Measure(StopRule):
    """The `[measure]` table: the stopping rule, plus how many passes a profile reads."""

    passes: int = 1

    def request(self, runtime: str, methods: tuple[MethodSpec, ...]) -> BenchRequest:
        """A benchmark request for `methods` under these settings."""
        rule = {f.name: getattr(self, f.name) for f in fields(StopRule)}
        return BenchRequest(runtime, methods, **rule)


@dataclass(frozen=True)
class DeviceProfile:
    """One device: how to reach it, how to run on it, how to keep its numbers honest."""

    name: str
    transport: str
    path: Path
    description: str = ""
    runtimes: tuple[str, ...] = PROFILED_RUNTIMES
    threads: int = 2
    cpus: tuple[int, ...] = ()
    adb: AdbSettings | None = None
    cooldown: Cooldown = Cooldown()
    sentinel: Sentinel = Sentinel()
    measure: Measure = Measure()
    cache_mb: float | None = None

    def cache_bytes(self) -> float:
        """The last-level cache a model must outgrow to stream its weights (see
        `merino_mobile.latency.predict_latency`): `cache_mb`, else for this host the largest
        cache sysfs lists, else 0 (unknown: no model is taken to run from cache)."""
        if self.cache_mb is not None:
            return float(self.cache_mb) * 1e6
        return float(host_cache_bytes()) if self.transport == "local" else 0.0

    @property
    def cpu_mask(self) -> str:
        """The pinned cores as a hex mask (taskset), "" when not pinned."""
        return hex(sum(1 << c for c in self.cpus)) if self.cpus else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "transport": self.transport, "path": str(self.path),
            "description": self.description, "runtimes": list(self.runtimes),
            "threads": self.threads, "cpus": list(self.cpus),
        }


# The range of every number in the tables: keyword arguments of `Fields.get`. Wide enough for
# any real device and setting; what they stop is a typo or an unbounded value (a negative count,
# a wait of a day) that would break or stall a profiling run.
_LIMITS: dict[type, dict[str, dict[str, Any]]] = {
    Cooldown: {"max_temp_c": {"lo": 0, "hi": 150, "above": True},
               "wait_s": {"lo": 0, "hi": 3600}, "max_wait_s": {"lo": 0, "hi": 86400},
               "pause_s": {"lo": 0, "hi": 3600}},
    Sentinel: {"every": {"lo": 1, "hi": 1_000_000},
               "threshold": {"lo": 0, "hi": 1000, "above": True}},
    Measure: {"warmup": {"lo": 0, "hi": 100_000}, "min_repeats": {"lo": 1, "hi": 10_000_000},
              "max_repeats": {"lo": 1, "hi": 10_000_000}, "target_spread": {"lo": 1, "hi": 1000},
              "max_seconds": {"lo": 0, "hi": 86400, "above": True},
              "timeout_s": {"lo": 0, "hi": 86400, "above": True},
              "min_seconds": {"lo": 0, "hi": 86400}, "passes": {"lo": 1, "hi": 1000}},
}
# [adb] keys the Android backend reads from `AdbSettings.extra`: (kind, read as a list, limits)
_ADB_EXTRAS: dict[str, tuple[type, bool, dict[str, Any]]] = {
    "auth_timeout_s": (float, False, {"lo": 0, "hi": 3600, "above": True}),
    "onnxruntime_perf_test": (str, False, {}),
    "thermal_zones": (str, True, {}),
    "expect_model": (str, True, {}),  # or one string
}
TOP_KEYS = ("schema_version", "name", "transport", "description", "runtimes", "threads", "cpus",
            "adb", "cooldown", "sentinel", "measure", "cache_mb")


def _adb_extra(t: Fields, known: set[str]) -> dict[str, Any]:
    """The [adb] keys that are not AdbSettings fields, for the backend."""
    extra: dict[str, Any] = {}
    for key in (k for k in t.data if k not in known):
        kind, as_list, limits = _ADB_EXTRAS.get(key, (None, False, {}))
        if kind is None:
            extra[key] = t.free(key)
        elif as_list and not (key == "expect_model" and isinstance(t.data[key], str)):
            extra[key] = list(t.get_list(key, kind, **limits))
        else:
            extra[key] = t.get(key, kind, **limits)
    return extra


def _table(cls: type, top: Fields, key: str) -> Any:
    """The table `key` of a profile as the settings dataclass `cls` (its defaults when absent)."""
    t = top.table(key, {})
    known = {f.name for f in fields(cls)} - {"extra"}
    given: dict[str, Any] = {}
    if cls is AdbSettings:
        given["extra"] = _adb_extra(t, known)
    else:
        t.only(known)
    obj = cls(**t.fill(cls, given, _LIMITS.get(cls)))
    if cls is Measure and obj.max_repeats < obj.min_repeats:
        t.fail("max_repeats", f"must be at least min_repeats ({obj.min_repeats}), got "
                              f"{obj.max_repeats}")
    return obj


def parse_profile(data: dict[str, Any], path: Path) -> DeviceProfile:
    """A profile from parsed TOML; every problem names the file, the key and the fix."""
    f = Fields(data, str(path), fmt="TOML")
    version = f.get("schema_version", int, SCHEMA_VERSION, expect=f"the integer {SCHEMA_VERSION}")
    if version != SCHEMA_VERSION:
        raise UserError(f"{path}: schema_version {version!r} is not supported (this version reads "
                        f"{SCHEMA_VERSION})")
    f.only(TOP_KEYS)
    transport = f.get("transport", str, choices=TRANSPORTS,
                      expect="one of " + ", ".join(f'"{t}"' for t in TRANSPORTS))
    cache_mb = f.get("cache_mb", float, None, lo=0, hi=1e6, above=True,
                     expect="a positive number of megabytes (the last-level cache)")
    adb = _table(AdbSettings, f, "adb") if "adb" in f else None
    if transport == "adb" and adb is None:
        raise UserError(f"{path}: transport \"adb\" needs an [adb] table with serial or address")
    if adb is not None and transport == "adb" and not (adb.serial or adb.address):
        raise UserError(f"{path}: [adb] needs serial = \"...\" (USB) or address = \"host:port\"")
    return DeviceProfile(
        name=f.get("name", str, path.stem), transport=transport, path=path,
        description=f.get("description", str, ""),
        runtimes=f.get_list("runtimes", str, PROFILED_RUNTIMES, choices=RUNTIMES),
        threads=f.get("threads", int, 2, lo=1, hi=1024),
        cpus=f.get_list("cpus", int, (), lo=0, hi=4095, most=4096),
        adb=adb, cooldown=_table(Cooldown, f, "cooldown"),
        sentinel=_table(Sentinel, f, "sentinel"), measure=_table(Measure, f, "measure"),
        cache_mb=cache_mb,
    )


def host_cache_bytes(sysfs: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """This machine's largest CPU cache in bytes (Linux sysfs; 0 when it cannot tell)."""
    best = 0
    for index in sysfs.glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            size = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        try:
            best = max(best, int(size.rstrip("KMG")) * unit)
        except ValueError:
            continue
    return best


def read_profile(path: Path) -> DeviceProfile:
    """Read one profile file (UTF-8 TOML)."""
    path = Path(path)
    return parse_profile(parse_toml(read_text(path, "device profile"), path), path)


def load_profile(ws: Workspace, name: str) -> DeviceProfile:
    """A profile by name (workspace devices/ first, then the shipped ones) or by path.

    Unknown names list the known devices.
    """
    return read_profile(ws.find("devices", name, ".toml"))


def all_profiles(ws: Workspace) -> list[DeviceProfile | UserError]:
    """Every profile visible from the workspace, by name; one that cannot be read is its
    UserError, so `devices` lists it with the reason beside the others (a command that uses
    that device refuses it with the same one line)."""
    out: list[DeviceProfile | UserError] = []
    for name in sorted(ws.names("devices", ".toml")):
        try:
            out.append(load_profile(ws, name))
        except UserError as e:
            out.append(e)
    return out
