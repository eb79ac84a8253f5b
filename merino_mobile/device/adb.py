"""Phones over ADB: a transport on adb-shell (TCP or USB) and the device built on it.

`AdbTransport` talks to the phone's adbd directly (no adb server), authenticating with the user's
~/.android/adbkey (created in adb's format if missing, so the phone's "Allow USB debugging"
prompt appears once and is remembered). Every command is an argv whose items are quoted with
shlex.quote, so names and paths never reach the device shell as code; exit codes and stderr come
back through a wrapper around the command (ADB shell protocol v1 carries only stdout).

`AdbDevice` is the profiler's view of a phone: fingerprint from getprop and /sys, artifacts and
the runner pushed once under /data/local/tmp/merino-mobile/<sha256>/ and verified with sha256sum
on the phone, runs pinned with taskset to the big cores at a fixed thread count, thermal
cooldown before each batch with the temperatures recorded next to the timings.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import posixpath
import secrets
import shlex
import socket
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merino_mobile.device import runners
from merino_mobile.device.base import (
    BenchRequest,
    BenchResult,
    EventHook,
    Fingerprint,
    Handle,
    MethodResult,
    MethodSpec,
    Probe,
    RunResult,
    Samples,
    file_sha256,
)
from merino_mobile.device.profiles import DeviceProfile
from merino_mobile.errors import UserError

DEFAULT_KEY = "~/.android/adbkey"
ADB_SERVER_PORT = 5037
UNAUTHORIZED = ("the phone did not accept this computer's key: unlock it and accept the "
                "'Allow USB debugging' prompt (tick 'Always allow from this computer'), then retry")
RUNNER_MISSING = ("no ExecuTorch runner binary for {name}: build one with `merino-mobile runner "
                  "build --ndk DIR --executorch-src DIR` (README: Profiling a phone), or set "
                  "runner = \"PATH\" under [adb] in {path}")


class DeviceGone(UserError):
    """The phone went away mid-run (cable, Wi-Fi, reboot). Finished measurements are kept."""


# -- keys ----------------------------------------------------------------------------------------

def ensure_adb_key(path: str | Path = DEFAULT_KEY) -> Path:
    """The adb private key at `path`, created (with `path`.pub, mode 0600) if missing.

    Same format as adb's own (PEM private key, Android public key blob), so a phone that already
    trusts this computer's adb trusts us, and vice versa.
    """
    key = Path(path).expanduser()
    if not key.exists():
        from adb_shell.auth.keygen import keygen

        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        old = os.umask(0o077)
        try:
            keygen(str(key))
        finally:
            os.umask(old)
        key.chmod(0o600)
    elif not Path(f"{key}.pub").exists():
        from adb_shell.auth.keygen import write_public_keyfile

        write_public_keyfile(str(key), f"{key}.pub")
    return key


def _signer(path: str | Path) -> Any:
    from adb_shell.auth.sign_cryptography import CryptographySigner

    key = ensure_adb_key(path)
    try:
        return CryptographySigner(str(key))
    except (ValueError, TypeError) as e:
        raise UserError(f"{key} is not an adb private key ({e}); move it away and rerun to "
                        "create a new one (the phone will ask to allow this computer again)"
                        ) from None


def usb_serial(serial: str | None) -> str | None:
    """A profile's serial; "auto" (the shipped profiles) means the one phone on USB."""
    return None if serial in (None, "", "auto") else serial


def adb_server_running(port: int = ADB_SERVER_PORT) -> bool:
    """Whether Google's adb server listens on this host (it then owns USB-attached phones)."""
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def usb_available() -> tuple[bool, str]:
    """adb-shell's USB support needs the libusb1 package (adb-shell's usb extra)."""
    try:
        import usb1  # noqa: F401
        from adb_shell.transport.usb_transport import UsbTransport  # noqa: F401
    except ImportError:
        return False, ("USB needs the libusb1 package (`pip install libusb1`, what adb-shell's usb "
                       "extra installs); TCP works without it")
    return True, "libusb1"


# -- transport -----------------------------------------------------------------------------------

def _lost_errors() -> tuple[type[BaseException], ...]:
    from adb_shell import exceptions as ex

    return (OSError, ex.TcpTimeoutException, ex.AdbConnectionError, ex.InvalidCommandError,
            ex.InvalidChecksumError, ex.InvalidResponseError, ex.UsbReadFailedError,
            ex.UsbWriteFailedError, ex.AdbTimeoutError)


class AdbTransport:
    """Commands and files to one phone over adb-shell (TCP address or USB serial)."""

    def __init__(self, *, address: str | None = None, serial: str | None = None,
                 key: str | Path = DEFAULT_KEY, auth_timeout_s: float = 30.0,
                 io_timeout_s: float = 10.0, scratch: str = "/data/local/tmp",
                 reconnects: int = 1) -> None:
        self.address, self.serial, self.key = address, serial, key
        self.auth_timeout_s, self.io_timeout_s = auth_timeout_s, io_timeout_s
        self.scratch, self.reconnects = scratch, reconnects
        self._dev: Any = None

    @property
    def target(self) -> str:
        return self.address or f"USB {self.serial or '(first phone)'}"

    # connection
    def connect(self) -> None:
        """Open the ADB connection: CNXN, then AUTH with our key (signature first; if the phone
        does not know the key, it is offered and the phone asks its user)."""
        signer = _signer(self.key)
        dev = self._tcp_device() if self.address else self._usb_device()
        offered = []
        try:
            dev.connect(rsa_keys=[signer], auth_timeout_s=self.auth_timeout_s,
                        transport_timeout_s=self.io_timeout_s, read_timeout_s=self.io_timeout_s,
                        auth_callback=lambda _dev: offered.append(True))
        except Exception as e:
            with contextlib.suppress(Exception):
                dev.close()
            from adb_shell import exceptions as ex

            if isinstance(e, ex.DeviceAuthError) or (offered and isinstance(
                    e, ex.TcpTimeoutException | ex.AdbTimeoutError | ex.UsbReadFailedError)):
                # adb-shell offered our public key and waited auth_timeout_s for the user.
                raise UserError(f"{self.target}: {UNAUTHORIZED}") from None
            if not self.address and "BUSY" in f"{type(e).__name__} {e}".upper():
                raise UserError(self._usb_busy()) from None
            if isinstance(e, OSError):
                raise self._unreachable(e) from None
            if isinstance(e, _lost_errors()):
                raise DeviceGone(f"{self.target}: the phone stopped answering during the ADB "
                                 f"handshake ({type(e).__name__}: {e})") from None
            raise
        self._dev = dev

    def _tcp_device(self) -> Any:
        from adb_shell.adb_device import AdbDevice
        from adb_shell.transport.tcp_transport import TcpTransport

        class EofTcpTransport(TcpTransport):
            # adb-shell treats a closed socket as "no data yet" and waits out the whole read
            # timeout; a phone that went away should be noticed at once.
            def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
                data = super().bulk_read(numbytes, transport_timeout_s)
                if numbytes and not data:
                    raise ConnectionResetError(104, "adbd closed the connection")
                return data

        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"ADB address {self.address!r} must be host:port, e.g. "
                            "192.168.1.20:5555")
        return AdbDevice(EofTcpTransport(host, int(port)),
                         default_transport_timeout_s=self.io_timeout_s)

    def _usb_device(self) -> Any:
        ok, why = usb_available()
        if not ok:
            raise UserError(f"cannot reach {self.target}: {why}")
        from adb_shell import exceptions as ex
        from adb_shell.adb_device import AdbDeviceUsb

        try:
            return AdbDeviceUsb(serial=self.serial, default_transport_timeout_s=self.io_timeout_s)
        except ex.UsbDeviceNotFoundError:
            if adb_server_running():
                raise UserError(self._usb_busy()) from None
            which = f" with serial {self.serial}" if self.serial else ""
            raise UserError(f"no phone{which} on USB: plug it in, enable "
                            "Developer options > USB debugging, and check the serial with "
                            "`merino-mobile devices`") from None

    def _usb_busy(self) -> str:
        return (f"{self.target} is held by a running adb server (Google's adb owns USB phones "
                "while it runs): run `adb kill-server`, then retry")

    def _unreachable(self, e: OSError) -> UserError:
        return DeviceGone(f"cannot reach adbd at {self.target} ({e.strerror or e}): on the phone "
                          "enable Wireless debugging or run `adb tcpip 5555` once over USB, and "
                          "check the address")

    def _device(self) -> Any:
        if self._dev is None:
            self.connect()
        return self._dev

    def close(self) -> None:
        if self._dev is not None:
            with contextlib.suppress(Exception):
                self._dev.close()
        self._dev = None

    def _call(self, what: str, fn: Any) -> Any:
        """Run one adb-shell call; on a lost connection reconnect (`reconnects` times) and
        repeat it (every call we make is idempotent), then give up with DeviceGone."""
        for attempt in range(self.reconnects + 1):
            try:
                dev = self._device()
            except DeviceGone as e:
                if attempt == 0:
                    raise
                raise DeviceGone(
                    f"lost the connection to {self.target} during {what}, and reconnecting "
                    f"failed ({e}); check the cable or Wi-Fi, then rerun the same command; "
                    "finished measurements are kept") from None
            try:
                return fn(dev)
            except UserError:
                raise
            except _lost_errors() as e:
                self.close()
                if attempt == self.reconnects:
                    raise DeviceGone(
                        f"lost the connection to {self.target} during {what} ({type(e).__name__}"
                        f"{': ' + str(e) if str(e) else ''}): check the cable or Wi-Fi, then "
                        "rerun the same command; finished measurements are kept") from None
                time.sleep(0.5)
        raise AssertionError("unreachable")

    # commands
    def run(self, argv: Sequence[str], timeout: float | None = None,
            stdin: str | None = None) -> RunResult:
        """Run argv on the phone. Each item is shell-quoted; exit code and stderr come back
        through a wrapper. `timeout` is enforced on the phone (toybox `timeout`), so a hung
        process is killed there, not only abandoned here."""
        if not argv:
            raise ValueError("empty argv")
        nonce = secrets.token_hex(8)
        marker = f"__merino_rc_{nonce}__"
        errfile = posixpath.join(self.scratch, f".merino-stderr-{nonce}")
        cmd = " ".join(shlex.quote(str(a)) for a in argv)
        if timeout is not None:
            cmd = f"timeout -s KILL {max(1, math.ceil(timeout))} {cmd}"
        if stdin is not None:
            cmd = f"printf %s {shlex.quote(stdin)} | {cmd}"
        q = shlex.quote(errfile)
        script = (f"{cmd} 2>{q}; __rc=$?; echo; echo {marker}$__rc; cat {q} 2>/dev/null; "
                  f"rm -f {q}")
        wait = (timeout or self.io_timeout_s * 6) + self.io_timeout_s
        start = time.monotonic()
        out = self._call(f"`{argv[0]}`", lambda d: d.shell(
            script, timeout_s=wait, read_timeout_s=wait, decode=False))
        text = out.decode("utf-8", "replace")
        head, sep, tail = text.partition("\n" + marker)
        if not sep:
            raise DeviceGone(f"{self.target}: `{argv[0]}` ended without an exit status "
                             "(connection cut?); rerun the same command")
        rc_text, _, stderr = tail.partition("\n")
        rc = int(rc_text.strip() or 255)
        timed_out = (timeout is not None and rc in (124, 137)
                     and time.monotonic() - start >= 0.9 * timeout)
        return RunResult(rc, head, stderr, timed_out)

    def check(self, argv: Sequence[str], what: str, timeout: float | None = None) -> str:
        """run() that must succeed; a failure is a UserError naming `what`."""
        r = self.run(argv, timeout=timeout)
        if not r.ok:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise UserError(f"{self.target}: {what} failed (exit {r.returncode}"
                            f"{', timed out' if r.timed_out else ''}): "
                            f"{msg[-1] if msg else 'no output'}")
        return r.stdout

    def sha256(self, remote: str) -> str | None:
        """sha256 of a file on the phone (toybox sha256sum), None if it does not exist."""
        r = self.run(["sha256sum", remote])
        word = r.stdout.split()[0] if r.ok and r.stdout.split() else ""
        return word.lower() if len(word) == 64 else None

    # files
    def push(self, local: Path, remote: str) -> None:
        """Push and verify with sha256sum on the phone; a mismatch is retried once."""
        local = Path(local)
        want = file_sha256(local)
        mode = stat.S_IFREG | (0o755 if os.access(local, os.X_OK) else 0o644)
        self.check(["mkdir", "-p", posixpath.dirname(remote)], f"mkdir for {remote}")
        got = None
        for _attempt in range(2):
            self._call(f"push of {local.name}", lambda d: d.push(
                str(local), remote, st_mode=mode, read_timeout_s=max(60.0, self.io_timeout_s)))
            got = self.sha256(remote)
            if got == want:
                return
        self.run(["rm", "-f", remote])
        raise UserError(f"pushed {local} to {self.target}:{remote} twice and the phone reports "
                        f"sha256 {got or 'none'} instead of {want}: the transfer is being "
                        "corrupted (try another cable or port, or check free space with "
                        "`adb shell df /data`)")

    def pull(self, remote: str, local: Path) -> None:
        """Copy one file from the phone to `local` (written via a temporary file)."""
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part")
        try:
            self._call(f"pull of {remote}", lambda d: d.pull(
                remote, str(tmp), read_timeout_s=max(60.0, self.io_timeout_s)))
        except Exception as e:
            tmp.unlink(missing_ok=True)
            from adb_shell import exceptions as ex

            if isinstance(e, ex.AdbCommandFailureException | ex.InvalidResponseError):
                raise UserError(f"cannot pull {remote} from {self.target}: {e}") from None
            raise
        tmp.replace(local)

    def pull_tree(self, remote_dir: str, local_dir: Path) -> tuple[list[Path], list[str]]:
        """Pull the regular files directly under `remote_dir` into `local_dir`.

        Names come from the phone; any that could land outside `local_dir` ('..', '/x',
        'a/b', NUL, empty) is refused and returned in the second list, never written.
        """
        entries = self._call(f"listing of {remote_dir}", lambda d: d.list(remote_dir))
        pulled, refused = [], []
        for entry in entries:
            name = entry.filename if isinstance(entry.filename, str) else bytes(
                entry.filename).decode("utf-8", "surrogateescape")
            if name in (".", ".."):
                continue
            target = safe_child(local_dir, name)
            if target is None:
                refused.append(name)
                continue
            if not stat.S_ISREG(entry.mode):
                continue
            self.pull(posixpath.join(remote_dir, name), target)
            pulled.append(target)
        return pulled, refused


def safe_child(directory: Path, name: str) -> Path | None:
    """directory/name if that is a plain file name inside directory, else None."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or name != name.strip("\n")):
        return None
    base = Path(directory).resolve()
    target = (base / name).resolve()
    return target if target.parent == base else None


# -- phone facts ---------------------------------------------------------------------------------

CPU_FREQ_SCRIPT = ("for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; do "
                   "printf '%s %s\\n' \"$f\" \"$(cat \"$f\")\"; done")
THERMAL_SCRIPT = ("for z in /sys/class/thermal/thermal_zone*; do "
                  "printf '%s\\t%s\\n' \"$(cat \"$z/type\")\" \"$(cat \"$z/temp\")\"; done")


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` listing ([key]: [value] lines) as a dict."""
    props = {}
    for line in text.splitlines():
        if line.startswith("[") and "]: [" in line and line.endswith("]"):
            k, _, v = line[1:-1].partition("]: [")
            props[k] = v
    return props


def parse_cpu_max_freq(text: str) -> dict[int, int]:
    """core -> cpuinfo_max_freq (kHz) from CPU_FREQ_SCRIPT's output."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            core = parts[0].split("/cpu/cpu")[-1].split("/")[0]
            if core.isdigit():
                out[int(core)] = int(parts[1])
    return out


def big_cores(max_freq: dict[int, int]) -> tuple[int, ...]:
    """The cluster with the highest maximum frequency (X1 on Tensor G2, X3/X4 prime cores...)."""
    if not max_freq:
        return ()
    top = max(max_freq.values())
    return tuple(sorted(c for c, f in max_freq.items() if f == top))


def cpu_mask(cpus: Sequence[int]) -> str:
    """taskset mask in hex without 0x (toybox's format): cores 6,7 -> 'c0'."""
    return format(sum(1 << c for c in cpus), "x")


def parse_thermal(text: str) -> dict[str, float]:
    """zone type -> °C. Zones report millidegrees (or degrees on a few old kernels); zones with
    nonsense readings (disabled sensors report -273000 or 0) are dropped."""
    temps: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, raw = line.partition("\t")
        try:
            v = float(raw.strip())
        except ValueError:
            continue
        c = v / 1000 if abs(v) >= 1000 else v
        if 0 < c < 150:
            key, i = kind.strip() or "zone", 2
            while key in temps:
                key, i = f"{kind.strip()}#{i}", i + 1
            temps[key] = round(c, 1)
    return temps


@dataclass
class PhoneFacts:
    """What a phone says about itself: properties, cluster frequencies, thermal zones."""

    props: dict[str, str]
    max_freq_khz: dict[int, int]

    @property
    def model(self) -> str:
        return self.props.get("ro.product.model", "unknown")

    @property
    def soc(self) -> str:
        for k in ("ro.soc.model", "ro.board.platform", "ro.hardware"):
            if self.props.get(k):
                return self.props[k]
        return "unknown"

    @property
    def os(self) -> str:
        build = self.props.get("ro.build.id") or self.props.get("ro.build.fingerprint", "")
        return f"Android {self.props.get('ro.build.version.release', '?')} ({build})"

    @property
    def abi(self) -> str:
        return self.props.get("ro.product.cpu.abi", "unknown")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "soc": self.soc, "os": self.os, "abi": self.abi,
                "max_freq_khz": {str(k): v for k, v in sorted(self.max_freq_khz.items())},
                "big_cores": list(big_cores(self.max_freq_khz))}


# -- device --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PhoneBenchResult(BenchResult):
    """A phone batch: the timings plus the temperatures around them and the cooldown wait."""

    temps_before_c: dict[str, float] = field(default_factory=dict)
    temps_after_c: dict[str, float] = field(default_factory=dict)
    cooldown_wait_s: float = 0.0
    cooled: bool = True
    outputs: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return super().to_json() | {
            "temps_before_c": self.temps_before_c, "temps_after_c": self.temps_after_c,
            "cooldown_wait_s": self.cooldown_wait_s, "cooled": self.cooled,
            "outputs": self.outputs}


def pte_input_bounds(artifact: Path) -> dict[str, list[tuple[int, ...] | None]]:
    """Upper-bound shape of each input of each method of a .pte (None: not a tensor), read with
    ExecuTorch's runtime here. executor_runner sizes its inputs from these bounds; a smaller
    shape needs --input_shapes and an input file padded to the bound."""
    try:
        import torch  # noqa: F401  (the runtime extension needs libtorch loaded)
        from executorch.extension.pybindings import _C

        program = _C._load_program(str(artifact))
    except Exception:
        return {}  # not loadable here: the runner on the phone will say why
    bounds: dict[str, list[tuple[int, ...] | None]] = {}
    for i in range(program.num_methods()):
        name = program.get_method_name(i)
        meta = program.method_meta(name)
        shapes: list[tuple[int, ...] | None] = []
        for j in range(meta.num_inputs()):
            try:
                shapes.append(tuple(meta.input_tensor_meta(j).sizes()))
            except Exception:
                shapes.append(None)
        bounds[name] = shapes
    return bounds


def fit_inputs(method: MethodSpec, data: list[bytes],
               bounds: list[tuple[int, ...] | None] | None) -> tuple[list[bytes], list[str]]:
    """Input files sized to the method's bounds, and the --input_shapes entries ('' = bound).

    A smaller (dynamic) shape keeps its values first and is zero-padded to the bound, as
    executor_runner reads a bound-sized buffer and then resizes the tensor over its start."""
    files, shapes = [], []
    for j, (spec, raw) in enumerate(zip(method.inputs, data, strict=True)):
        bound = bounds[j] if bounds and j < len(bounds) else None
        if bound is None or tuple(spec.shape) == bound:
            files.append(raw)
            shapes.append("")
            continue
        if len(bound) != len(spec.shape) or any(s > b for s, b in zip(spec.shape, bound,
                                                                       strict=True)):
            raise UserError(f"input {j} of {method.name} has shape {list(spec.shape)}, outside "
                            f"the exported bound {list(bound)}")
        itemsize = len(raw) // max(1, math.prod(spec.shape))
        files.append(raw + bytes(itemsize * math.prod(bound) - len(raw)))
        shapes.append("x".join(map(str, spec.shape)))
    return files, shapes


def input_files(method: MethodSpec) -> list[bytes]:
    """Raw little-endian bytes of each input, as executor_runner's --inputs reads them: the very
    arrays the host worker feeds (worker.make_inputs), so phone and host run the same data."""
    from merino_mobile.device.worker import make_inputs

    return [a.astype(a.dtype.newbyteorder("<")).tobytes() for a in make_inputs(method.inputs)]


class AdbDevice:
    """A phone the profiler measures on, reached through an AdbTransport."""

    replicates = False  # executor_runner runs one instance of a method per process

    def __init__(self, profile: DeviceProfile, transport: AdbTransport | None = None,
                 runner: Path | str | None = None) -> None:
        if profile.adb is None:
            raise UserError(f"{profile.path}: transport \"adb\" needs an [adb] table")
        self.profile, self.name = profile, profile.name
        settings = profile.adb
        self.transport = transport or AdbTransport(
            address=settings.address, serial=usb_serial(settings.serial), key=settings.adbkey,
            auth_timeout_s=float(settings.extra.get("auth_timeout_s", 30.0)))
        self.remote_dir = settings.remote_dir.rstrip("/") or "/data/local/tmp/merino-mobile"
        # runner = "minibench": ExecuTorch's Android benchmark app instead of the native runner.
        self.app = (runner or settings.runner) == "minibench"
        self._app_installed: bool | None = None
        self.runner = None if self.app else self._local(runner or settings.runner)
        self.ort_tool = self._local(settings.extra.get("onnxruntime_perf_test"))
        self.zones = tuple(settings.extra.get("thermal_zones", ()))
        self.session = posixpath.join(self.remote_dir, f"run-{secrets.token_hex(4)}")
        self._facts: PhoneFacts | None = None
        self._pushed: dict[str, str] = {}  # sha256 -> remote path
        self._bounds: dict[str, dict[str, list[tuple[int, ...] | None]]] = {}  # by .pte sha256
        self._made: list[str] = []
        self._outputs = Path(tempfile.mkdtemp(prefix=f"merino-{self.name}-"))

    def _local(self, value: Any) -> Path | None:
        if not value:
            return None
        p = Path(str(value)).expanduser()
        if not p.is_absolute():
            near = self.profile.path.parent / p
            p = near if near.exists() else p.resolve()
        return p

    # facts
    def facts(self) -> PhoneFacts:
        """Properties and CPU clusters, read once; the phone must be the profile's model."""
        if self._facts is None:
            props = parse_getprop(self.transport.check(["getprop"], "getprop"))
            freq = parse_cpu_max_freq(self.transport.check(
                ["sh", "-c", CPU_FREQ_SCRIPT], "reading CPU frequencies"))
            facts = PhoneFacts(props, freq)
            expect = self.profile.adb.extra.get("expect_model") if self.profile.adb else None
            if expect and facts.model not in ([expect] if isinstance(expect, str) else expect):
                raise UserError(f"{self.profile.path} is for {expect} but the phone at "
                                f"{self.transport.target} is a {facts.model!r}: use that phone's "
                                "profile (or copy one and set expect_model)")
            self._facts = facts
        return self._facts

    def cpus(self) -> tuple[int, ...]:
        """The cores runs are pinned to: the profile's, else the fastest cluster."""
        return tuple(self.profile.cpus) or big_cores(self.facts().max_freq_khz)

    def temperatures(self) -> dict[str, float]:
        """°C per thermal zone (the profile's `thermal_zones` under [adb], else all of them)."""
        temps = parse_thermal(self.transport.run(["sh", "-c", THERMAL_SCRIPT]).stdout)
        if self.zones:
            temps = {k: v for k, v in temps.items() if k.split("#")[0] in self.zones}
        return temps

    def cooldown(self) -> tuple[dict[str, float], float, bool]:
        """Wait (bounded by max_wait_s) until the hottest zone is below max_temp_c.

        Returns the temperatures measured last, the seconds waited, and whether it cooled."""
        c = self.profile.cooldown
        start = time.monotonic()
        temps = self.temperatures()
        if c.max_temp_c is not None:
            while temps and max(temps.values()) >= c.max_temp_c:
                if time.monotonic() - start + c.wait_s > c.max_wait_s:
                    return temps, time.monotonic() - start, False
                time.sleep(c.wait_s)
                temps = self.temperatures()
        return temps, time.monotonic() - start, True

    def fingerprint(self, runtime: str, quant: str) -> Fingerprint:
        f = self.facts()
        tool = self.runner if runtime == "executorch" else self.ort_tool
        version = f"{tool.name} sha256:{file_sha256(tool)[:12]}" if tool and tool.exists() else "?"
        if runtime == "executorch" and self.app:
            version = f"{runners.MINIBENCH_PACKAGE} (ExecuTorch benchmark app)"
        return Fingerprint(
            device=self.name, model=f.model, cpu=f.soc, cores=len(f.max_freq_khz) or 0,
            os=f.os, abi=f.abi, runtime=runtime, runtime_version=version,
            threads=self.profile.threads, quant=quant, cpus=self.cpus(),
            date=dt.datetime.now(dt.timezone.utc).date().isoformat())

    def app_installed(self) -> bool:
        """Whether ExecuTorch's benchmark app (org.pytorch.minibench) is on the phone."""
        if self._app_installed is None:
            r = self.transport.run(["pm", "list", "packages", runners.MINIBENCH_PACKAGE])
            self._app_installed = f"package:{runners.MINIBENCH_PACKAGE}" in r.stdout.split()
        return self._app_installed

    def runtimes(self) -> list[str]:
        native = self.runner is not None and self.runner.exists()
        have = {"executorch": native or (self.app and self.app_installed()),
                "onnxruntime": self.ort_tool is not None and self.ort_tool.exists()}
        return [r for r in self.profile.runtimes if have.get(r)]

    # files
    def _push_once(self, local: Path) -> str:
        """Push `local` to <remote_dir>/<sha256>/<name> unless the phone already has it."""
        sha = file_sha256(local)
        if sha in self._pushed:
            return self._pushed[sha]
        remote = posixpath.join(self.remote_dir, sha, local.name)
        if self.transport.sha256(remote) != sha:
            self.transport.push(local, remote)
            self._made.append(posixpath.dirname(remote))
        self._pushed[sha] = remote
        return remote

    def _tool_for(self, runtime: str) -> Path | None:
        if runtime == "executorch" and self.app:
            if not self.app_installed():
                raise UserError(f"{self.profile.path} uses ExecuTorch's benchmark app "
                                "(runner = \"minibench\") but it is not installed on the phone: "
                                "build and install extension/benchmark/android/benchmark "
                                "(./gradlew installDebug), or build the native runner")
            return None
        tool = self.runner if runtime == "executorch" else self.ort_tool
        if tool is None or not tool.exists():
            if runtime == "executorch":
                raise UserError(RUNNER_MISSING.format(name=self.name, path=self.profile.path))
            raise UserError(f"no onnxruntime_perf_test for {self.name}: set "
                            f"onnxruntime_perf_test = \"PATH\" under [adb] in {self.profile.path}"
                            " (an arm64 build from ONNX Runtime's Android build)")
        return tool

    def prepare(self, artifact: Path) -> Handle:
        artifact = Path(artifact)
        runtime = {".pte": "executorch", ".onnx": "onnxruntime"}.get(artifact.suffix)
        if runtime is None:
            raise UserError(f"{artifact}: phones run .pte (ExecuTorch) or .onnx (ONNX Runtime)")
        if not artifact.is_file():
            raise UserError(f"{artifact}: no such file")
        tool = self._tool_for(runtime)
        if tool is not None:
            self._push_once(tool)
        remote = self._push_once(artifact)
        sha = file_sha256(artifact)
        if runtime == "executorch" and not self.app:
            self._bounds[sha] = pte_input_bounds(artifact)
        return Handle(artifact, remote, runtime, sha, artifact.stat().st_size)

    # running
    def benchmark(self, handle: Handle, request: BenchRequest,
                  on_event: EventHook | None = None) -> BenchResult:
        """Time each method with the runner pinned to the big cores; the batch starts after
        the cooldown and records temperatures before and after. A crash or hang of the runner
        is that method's error; a lost connection raises DeviceGone."""
        t0 = time.monotonic()
        local_tool = self._tool_for(handle.runtime)
        tool = self._push_once(local_tool) if local_tool is not None else ""
        temps_before, waited, cooled = self.cooldown()
        results, outputs = [], {}
        for i, method in enumerate(request.methods):
            if on_event:
                on_event("start", method.name, 0)
            if handle.runtime == "executorch" and self.app:
                res, outs = self._bench_minibench(handle, method, request), []
            elif handle.runtime == "executorch":
                res, outs = self._bench_executorch(tool, handle, method, request, i)
            else:
                res, outs = self._bench_ort(tool, handle, method, request), []
            results.append(res)
            outputs[method.name] = [str(p) for p in outs]
            if on_event:
                on_event("done" if res.ok else "failed", method.name, 0)
        # The app picks its own threads and cores; only the native runner is pinned.
        threads, cpus = (0, ()) if self.app else (self.profile.threads, self.cpus())
        return PhoneBenchResult(
            tuple(results), threads, cpus, time.monotonic() - t0,
            temps_before_c=temps_before, temps_after_c=self.temperatures(),
            cooldown_wait_s=round(waited, 3), cooled=cooled, outputs=outputs)

    def _pinned(self, argv: list[str]) -> list[str]:
        cpus = self.cpus()
        return ["taskset", cpu_mask(cpus), *argv] if cpus else argv

    def _bench_executorch(self, tool: str, handle: Handle, method: MethodSpec,
                          request: BenchRequest, index: int) -> tuple[MethodResult, list[Path]]:
        work = posixpath.join(self.session, f"{handle.sha256[:12]}-{index}")
        inputs = []
        try:
            files, shapes = fit_inputs(method, input_files(method),
                                       self._bounds.get(handle.sha256, {}).get(method.name))
        except UserError as e:
            return MethodResult(method.name, (), str(e)), []
        with tempfile.TemporaryDirectory() as tmp:
            for j, data in enumerate(files):
                local = Path(tmp) / f"input-{j}.bin"
                local.write_bytes(data)
                inputs.append(self._push_once(local))
        samples = Samples(request)
        out_base = posixpath.join(work, "output")
        self.transport.check(["mkdir", "-p", work], "mkdir for outputs")
        self._made.append(work)
        n = request.warmup + request.min_repeats
        load_ms = None
        for _ in range(8):  # bounded: the stopping rule normally ends it in one or two runs
            argv = self._pinned(runners.executor_runner_argv(
                tool, handle.remote, method=method.name, num_executions=n,
                threads=self.profile.threads, inputs=inputs,
                input_shapes=shapes if any(shapes) else None, output_file=out_base))
            r = self.transport.run(argv, timeout=request.timeout_s)
            if r.timed_out:
                return MethodResult(method.name, tuple(samples.values),
                                    f"runner timed out after {request.timeout_s:g}s"), []
            timings = runners.parse_executor_runner(r.stderr + "\n" + r.stdout)
            new = timings.samples(skip=request.warmup)
            if r.returncode != 0 or not new:
                why = timings.errors[-1] if timings.errors else _last_line(r)
                return MethodResult(method.name, tuple(samples.values),
                                    f"runner failed (exit {r.returncode}): {why}"), []
            load_ms = timings.load_ms if load_ms is None else load_ms  # the first, cold load
            if any(samples.add(s) for s in new):
                break
            left = request.max_repeats - len(samples.values)
            per = max(1e-3, sorted(new)[len(new) // 2])
            by_time = math.ceil(max(0.0, request.max_seconds - samples.elapsed_s) * 1e3 / per)
            n = request.warmup + max(1, min(left, by_time))
        local_dir = self._outputs / f"{handle.sha256[:12]}-{method.name}"
        pulled, _refused = self.transport.pull_tree(work, local_dir)
        return MethodResult(method.name, tuple(samples.values), load_ms=load_ms), pulled

    def _bench_minibench(self, handle: Handle, method: MethodSpec,
                         request: BenchRequest) -> MethodResult:
        """One app run: it times `max_repeats` forward calls after `warmup` and reports their
        trimmed mean (the app keeps no per-call samples), which is the one sample returned."""
        if method.name != "forward":
            return MethodResult(method.name, (), "ExecuTorch's benchmark app runs only the "
                                "'forward' method; build the native runner (`merino-mobile "
                                "runner build`) for multi-method micro-benchmarks")
        results = runners.minibench_results_argv()
        self.transport.run([*results[:2], "rm", "-f", results[-1]])
        r = self.transport.run(runners.minibench_argv(
            posixpath.dirname(handle.remote), request.max_repeats, request.warmup),
            timeout=request.timeout_s)
        if not r.ok:
            why = "timed out" if r.timed_out else _last_line(r)
            return MethodResult(method.name, (), f"benchmark app did not start: {why}")
        deadline = time.monotonic() + request.timeout_s
        while True:  # `am start -W` returns at launch; the activity writes its file when done
            out = self.transport.run(results)
            t = runners.parse_minibench(out.stdout) if out.ok else None
            if t is not None and (t.ok or t.errors):
                break
            if time.monotonic() > deadline:
                return MethodResult(method.name, (), f"benchmark app wrote no results within "
                                    f"{request.timeout_s:g}s")
            time.sleep(1.0)
        if not t.ok:
            return MethodResult(method.name, (), f"benchmark app: {t.errors[-1]}")
        return MethodResult(method.name, tuple(t.samples()), load_ms=t.load_ms)

    def _bench_ort(self, tool: str, handle: Handle, method: MethodSpec,
                   request: BenchRequest) -> MethodResult:
        # onnxruntime_perf_test reports aggregates only: each run's mean is one sample.
        samples = Samples(request)
        for _ in range(max(1, request.min_repeats)):
            argv = self._pinned(runners.ort_perf_test_argv(
                tool, handle.remote, runs=max(1, request.min_repeats),
                threads=self.profile.threads))
            r = self.transport.run(argv, timeout=request.timeout_s)
            if r.timed_out:
                return MethodResult(method.name, tuple(samples.values),
                                    f"onnxruntime_perf_test timed out after "
                                    f"{request.timeout_s:g}s")
            t = runners.parse_ort_perf_test(r.stdout + r.stderr)
            if r.returncode != 0 or not t.ok:
                why = t.errors[-1] if t.errors else _last_line(r)
                return MethodResult(method.name, tuple(samples.values),
                                    f"onnxruntime_perf_test failed (exit {r.returncode}): {why}")
            if samples.add(t.total_ms / t.executions):
                break
        return MethodResult(method.name, tuple(samples.values))

    def cleanup(self) -> None:
        """Remove this session's files from the phone (the runner stays: pushed once, reused)."""
        keep = {posixpath.dirname(p) for sha, p in self._pushed.items()
                if self.runner and p.endswith("/" + self.runner.name)}
        gone = [d for d in dict.fromkeys(self._made + [self.session]) if d not in keep]
        with contextlib.suppress(UserError):
            if gone:
                self.transport.run(["rm", "-rf", *gone])
        self._pushed.clear()
        self._made.clear()
        self.transport.close()


def _last_line(r: RunResult) -> str:
    lines = (r.stderr.strip() or r.stdout.strip()).splitlines()
    return lines[-1] if lines else "no output"


# -- backend entry points (merino_mobile.device.open_device / probe) ----------------------------

def open_device(profile: DeviceProfile) -> AdbDevice:
    """The phone a profile describes; connects on first use."""
    return AdbDevice(profile)


def probe(profile: DeviceProfile) -> Probe:
    """Reachable now? Connects, reads the model, disconnects. Never raises."""
    if profile.adb is None:
        return Probe(False, "no [adb] table in the profile")
    t = AdbTransport(address=profile.adb.address, serial=usb_serial(profile.adb.serial),
                     key=profile.adb.adbkey, auth_timeout_s=5.0, io_timeout_s=3.0, reconnects=0)
    try:
        t.connect()
        model = t.check(["getprop", "ro.product.model"], "getprop").strip()
        return Probe(True, f"{model} at {t.target}")
    except UserError as e:
        return Probe(False, str(e))
    except Exception as e:
        return Probe(False, f"{type(e).__name__}: {e}")
    finally:
        t.close()


def list_adb_devices(profiles: Sequence[DeviceProfile] = ()) -> list[dict]:
    """Phones this computer can see: USB devices in ADB mode (needs adb-shell[usb]) and the
    TCP/USB targets configured in `profiles`, each with reachable and a reason."""
    rows: list[dict] = []
    ok, why = usb_available()
    if ok:
        rows += _usb_rows()
    else:
        rows.append({"transport": "usb", "serial": None, "profile": None, "reachable": None,
                     "reason": why})
    for prof in profiles:
        if prof.transport != "adb" or prof.adb is None:
            continue
        p = probe(prof)
        rows.append({"transport": "tcp" if prof.adb.address else "usb",
                     "serial": prof.adb.address or prof.adb.serial, "profile": prof.name,
                     "reachable": p.reachable, "reason": p.detail})
    return rows


def _usb_rows() -> list[dict]:
    from adb_shell import constants
    from adb_shell.transport.usb_transport import UsbTransport, get_interface

    rows = []
    try:
        matcher = _interface_matcher(constants.CLASS, constants.SUBCLASS, constants.PROTOCOL,
                                     get_interface)
        for t in UsbTransport._find_devices(matcher):
            try:
                serial = t.serial_number
                rows.append({"transport": "usb", "serial": serial, "profile": None,
                             "reachable": True, "reason": "USB, ADB interface"})
            except Exception as e:
                busy = "BUSY" in str(e).upper() or "ACCESS" in str(e).upper()
                reason = ("held by a running adb server: run `adb kill-server`" if busy and
                          adb_server_running() else f"cannot open: {e}")
                rows.append({"transport": "usb", "serial": None, "profile": None,
                             "reachable": False, "reason": reason})
    except Exception as e:
        rows.append({"transport": "usb", "serial": None, "profile": None, "reachable": None,
                     "reason": f"USB enumeration failed: {e}"})
    return rows


def _interface_matcher(clazz: int, subclass: int, protocol: int, get_interface: Any) -> Any:
    def matcher(device: Any) -> Any:
        for setting in device.iterSettings():
            if get_interface(setting) == (clazz, subclass, protocol):
                return setting
        return None
    return matcher
