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
                                       # pass; the table takes the median

Every table and key except name/transport is optional. Errors name the file and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from merino_mobile.device.base import RUNTIMES, BenchRequest, MethodSpec
from merino_mobile.errors import UserError
from merino_mobile.workspace import Workspace

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SCHEMA_VERSION = 1
TRANSPORTS = ("local", "adb")


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
class Measure:
    warmup: int = 3
    min_repeats: int = 5
    max_repeats: int = 50
    target_spread: float = 1.15
    max_seconds: float = 2.0
    timeout_s: float = 120.0
    min_seconds: float = 0.0
    passes: int = 1

    def request(self, runtime: str, methods: tuple[MethodSpec, ...]) -> BenchRequest:
        """A benchmark request for `methods` under these settings."""
        return BenchRequest(runtime, methods, self.warmup, self.min_repeats, self.max_repeats,
                            self.target_spread, self.max_seconds, self.timeout_s,
                            self.min_seconds)


@dataclass(frozen=True)
class DeviceProfile:
    """One device: how to reach it, how to run on it, how to keep its numbers honest."""

    name: str
    transport: str
    path: Path
    description: str = ""
    runtimes: tuple[str, ...] = RUNTIMES
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


def _table(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a table")
    known = {f.name for f in fields(cls)} - {"extra"}
    if cls is AdbSettings:
        extra = {k: v for k, v in data.items() if k not in known}
        data = {k: v for k, v in data.items() if k in known} | {"extra": extra}
    else:
        unknown = set(data) - known
        if unknown:
            raise UserError(f"{where} has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    try:
        obj = cls(**data)
    except TypeError as e:
        raise UserError(f"{where}: {e}") from None
    for f in fields(cls):
        v = getattr(obj, f.name)
        if f.type in ("float", "float | None", "int") and v is not None and (
                not isinstance(v, int | float) or isinstance(v, bool)):
            raise UserError(f"{where}.{f.name} must be a number, got {v!r}")
    return obj


def parse_profile(data: dict[str, Any], path: Path) -> DeviceProfile:
    """A profile from parsed TOML; every problem names the file."""
    where = str(path)
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise UserError(f"{where}: schema_version {version!r} is not supported (this version reads "
                        f"{SCHEMA_VERSION})")
    known = {"schema_version", "name", "transport", "description", "runtimes", "threads", "cpus",
             "adb", "cooldown", "sentinel", "measure", "cache_mb"}
    unknown = set(data) - known
    if unknown:
        raise UserError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    name = data.get("name", path.stem)
    transport = data.get("transport")
    if transport not in TRANSPORTS:
        raise UserError(f"{where}: transport must be one of {list(TRANSPORTS)}, got {transport!r}")
    runtimes = tuple(data.get("runtimes", RUNTIMES))
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad:
        raise UserError(f"{where}: unknown runtimes {bad}; known: {list(RUNTIMES)}")
    threads = data.get("threads", 2)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise UserError(f"{where}: threads must be a positive integer, got {threads!r}")
    cpus = data.get("cpus", [])
    if not isinstance(cpus, list) or not all(isinstance(c, int) and c >= 0 for c in cpus):
        raise UserError(f"{where}: cpus must be a list of core numbers such as [6, 7], "
                        f"got {cpus!r}")
    cache_mb = data.get("cache_mb")
    if cache_mb is not None and (not isinstance(cache_mb, int | float)
                                 or isinstance(cache_mb, bool) or cache_mb <= 0):
        raise UserError(f"{where}: cache_mb must be a positive number of megabytes (the "
                        f"last-level cache), got {cache_mb!r}")
    adb = _table(AdbSettings, data["adb"], f"{where}: [adb]") if "adb" in data else None
    if transport == "adb" and adb is None:
        raise UserError(f"{where}: transport \"adb\" needs an [adb] table with serial or address")
    if adb is not None and transport == "adb" and not (adb.serial or adb.address):
        raise UserError(f"{where}: [adb] needs serial = \"...\" (USB) or address = \"host:port\"")
    return DeviceProfile(
        name=name, transport=transport, path=path, description=data.get("description", ""),
        runtimes=runtimes, threads=threads, cpus=tuple(cpus), adb=adb,
        cooldown=_table(Cooldown, data.get("cooldown", {}), f"{where}: [cooldown]"),
        sentinel=_table(Sentinel, data.get("sentinel", {}), f"{where}: [sentinel]"),
        measure=_table(Measure, data.get("measure", {}), f"{where}: [measure]"),
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
    """Read one profile file."""
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cannot read device profile {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    return parse_profile(data, path)


def load_profile(ws: Workspace, name: str) -> DeviceProfile:
    """A profile by name (workspace devices/ first, then the shipped ones) or by path.

    Unknown names list the known devices.
    """
    return read_profile(ws.find("devices", name, ".toml"))


def all_profiles(ws: Workspace) -> list[DeviceProfile | UserError]:
    """Every profile visible from the workspace; unreadable ones as their error."""
    out: list[DeviceProfile | UserError] = []
    for name in sorted(ws.names("devices", ".toml")):
        try:
            out.append(load_profile(ws, name))
        except UserError as e:
            out.append(e)
    return out
