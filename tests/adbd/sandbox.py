"""The phone's filesystem, as a directory on this host.

The loopback adbd runs every shell command on this host, but with device paths (/data, /sdcard,
/sys, /tmp) mapped into `root`, and with `getprop` and `taskset` replaced by small scripts that
answer like a Pixel 7 (Tensor G2: cores 0-3 Cortex-A55, 4-5 Cortex-A78, 6-7 Cortex-X1). The rest
of the toolbox (sh, cat, sha256sum, timeout, mkdir, rm, chmod) is this host's: it behaves like
Android's toybox for the commands the toolkit sends.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Device roots that live inside the sandbox. Other absolute paths (/bin/sh, /proc) are the host's.
MAPPED_ROOTS = ("data", "sdcard", "sys", "tmp")
_DEVICE_ROOT = re.compile(r"/(" + "|".join(MAPPED_ROOTS) + r")(?=/|\b|$)")


def rewrite_command(command: str, root: str) -> str:
    """Move device paths into `root`, where a word (or a flag value after '=' or ',') starts.

    Quote-aware, so a path that is data (`'/data/x; touch /tmp/y'`) has only its head moved. A
    nested `sh -c 'script'` is rewritten by the sandbox's own `sh`, which calls this again.
    """
    out, quote, start, i = [], None, True, 0
    while i < len(command):
        c = command[i]
        if start and c == "/" and _DEVICE_ROOT.match(command, i):
            out.append(root)
        if quote is None and c == "\\" or quote == '"' and c == "\\":
            out.append(command[i:i + 2])
            i, start = i + 2, False
            continue
        if quote is None:
            if c in "'\"":
                quote = c  # a quote that opens at a word start keeps it a word start
            else:
                start = c.isspace() or c in ";|&()<>=,"
        elif c == quote:
            quote = None
        else:
            start = c in "=,"
        out.append(c)
        i += 1
    return "".join(out)


PIXEL7_PROPS = {
    "ro.product.model": "Pixel 7",
    "ro.product.name": "panther",
    "ro.product.device": "panther",
    "ro.product.manufacturer": "Google",
    "ro.soc.manufacturer": "Google",
    "ro.soc.model": "Tensor G2",
    "ro.board.platform": "gs201",
    "ro.hardware": "panther",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.build.fingerprint": "google/panther/panther:14/UQ1A.240205.004/11269751:user/release-keys",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.product.cpu.abilist": "arm64-v8a,armeabi-v7a,armeabi",
    "ro.serialno": "28201FDH2000XY",
}
# cpuinfo_max_freq in kHz, per core.
PIXEL7_CPU_MAX_KHZ = [1803000] * 4 + [2348000] * 2 + [2850000] * 2
PIXEL7_THERMAL = {"BIG": 41000, "MID": 39500, "LITTLE": 38000, "G3D": 37000, "TPU": 36500,
                  "battery": 31000, "skin-therm": 33000}

GETPROP = """#!/bin/sh
# getprop stand-in: `getprop` lists [key]: [value]; `getprop KEY` prints the value or an empty line.
props='{props}'
if [ $# -eq 0 ]; then
  awk -F= '{{k=$1; sub(/^[^=]*=/, ""); printf "[%s]: [%s]\\n", k, $0}}' "$props"
else
  v=$(awk -F= -v k="$1" '$1==k {{sub(/^[^=]*=/, ""); print; exit}}' "$props")
  printf '%s\\n' "$v"
fi
"""

TASKSET = """#!/bin/sh
# toybox `taskset MASK COMMAND...` stand-in for an 8-core phone. This host has fewer cores, so the
# mask is checked against the phone's CPUs and logged, and the command runs unpinned.
mask="$1"; shift
case "$mask" in ''|*[!0-9a-fA-Fx]*) echo "taskset: bad mask '$mask'" >&2; exit 1;; esac
v=$((0x${{mask#0x}}))
if [ "$v" -le 0 ] || [ "$v" -gt 255 ]; then
  echo "taskset: sched_setaffinity: Invalid argument" >&2; exit 1
fi
printf '%s\\n' "$mask" >> '{log}'
exec "$@"
"""


# ExecuTorch's Android benchmark app (org.pytorch.minibench), as far as the shell sees it: `pm`
# lists it when installed, `am start` runs its BenchmarkActivity to completion (the fake
# executor_runner times the model) and writes files/benchmark_results.json in the app's Gson
# format, `run-as` enters its data dir.
PM = """#!/bin/sh
[ -e '{flag}' ] && [ "$1 $2" = "list packages" ] && echo "package:org.pytorch.minibench"
exit 0
"""
RUN_AS = """#!/bin/sh
pkg="$1"; shift
[ -d '{data}'/"$pkg" ] || {{ echo "run-as: unknown package: $pkg" >&2; exit 1; }}
cd '{data}'/"$pkg" && exec "$@"
"""
AM = """#!{python}
import glob, json, os, re, subprocess, sys
args = sys.argv[1:]
if not os.path.exists({flag!r}) or args[:1] != ["start"]:
    print("Error: Activity not started, unable to resolve Intent", file=sys.stderr)
    sys.exit(1)
extras = {{args[i + 1]: args[i + 2] for i in range(len(args) - 2) if args[i] in ("--es", "--ei")}}
model = sorted(glob.glob(os.path.join(extras["model_dir"], "*.pte")))[0]
n, warm = int(extras.get("num_iter", 50)), int(extras.get("num_warm_up_iter", 10))
run = subprocess.run([{runner!r}, "--model_path=" + model, "--num_executions=%d" % (n + warm)],
                     capture_output=True, text=True)
lat = [float(m) for m in re.findall(r"Iteration \\d+ of \\d+: ([0-9.]+) ms", run.stderr)][warm:]
name = os.path.basename(model)[:-4]
bm = {{"name": name, "backend": "", "quantization": ""}}
res = [{{"benchmarkModel": bm, "metric": "load_status", "actualValue": float(run.returncode != 0),
         "targetValue": 0.0}}]
if lat:
    lat.sort()
    trim = lat[len(lat) // 10: len(lat) * 9 // 10] or lat
    res += [{{"benchmarkModel": bm, "metric": "avg_inference_latency(ms)",
              "actualValue": sum(lat) / len(lat), "targetValue": 0.0}},
            {{"benchmarkModel": bm, "metric": "trimmean_inference_latency(ms)",
              "actualValue": sum(trim) / len(trim), "targetValue": 0.0}}]
files = os.path.join({data!r}, "org.pytorch.minibench", "files")
os.makedirs(files, exist_ok=True)
with open(os.path.join(files, "benchmark_results.json"), "w") as fh:
    json.dump(res, fh)
print("Starting: Intent {{ cmp=org.pytorch.minibench/.BenchmarkActivity (has extras) }}")
print("Status: ok\\nLaunchState: COLD\\nActivity: org.pytorch.minibench/.BenchmarkActivity")
print("Complete")
"""

SH = """#!{python}
# `sh` stand-in: rewrites device paths in `sh -c SCRIPT` as the adbd does for top-level commands.
import os, sys
sys.path.insert(0, {here!r})
from sandbox import rewrite_command
args = sys.argv[1:]
if "-c" in args and args.index("-c") + 1 < len(args):
    i = args.index("-c") + 1
    args[i] = rewrite_command(args[i], {root!r})
os.execv("/bin/sh", ["sh", *args])
"""


@dataclass
class PhoneSandbox:
    """A Pixel-7-like filesystem under `root`: props, CPU topology, thermal zones, /data."""

    root: Path
    props: dict[str, str] = field(default_factory=lambda: dict(PIXEL7_PROPS))
    cpu_max_khz: list[int] = field(default_factory=lambda: list(PIXEL7_CPU_MAX_KHZ))
    thermal: dict[str, int] = field(default_factory=lambda: dict(PIXEL7_THERMAL))
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.fixture_dir = self.root / ".fixture"
        self.bin_dir = self.root / "system" / "bin"
        for d in ("data/local/tmp", "sdcard", "tmp", ".fixture", "system/bin"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "system" / "build.prop").write_text(
            "".join(f"{k}={v}\n" for k, v in self.props.items()))
        self._script("getprop", GETPROP.format(props=self.root / "system" / "build.prop"))
        self._script("taskset", TASKSET.format(log=self.taskset_log))
        data, flag = self.root / "data" / "data", self.fixture_dir / "minibench-installed"
        from .server import RUNNER

        self._script("pm", PM.format(flag=flag))
        self._script("run-as", RUN_AS.format(data=data))
        self._script("am", AM.format(python=sys.executable, flag=str(flag), runner=str(RUNNER),
                                     data=str(data)))
        self._script("sh", SH.format(python=sys.executable, here=str(Path(__file__).parent),
                                     root=str(self.root)))
        cpu = self.root / "sys/devices/system/cpu"
        for i, khz in enumerate(self.cpu_max_khz):
            freq = cpu / f"cpu{i}" / "cpufreq"
            freq.mkdir(parents=True, exist_ok=True)
            (freq / "cpuinfo_max_freq").write_text(f"{khz}\n")
        last = len(self.cpu_max_khz) - 1
        for name in ("possible", "present", "online"):
            (cpu / name).write_text(f"0-{last}\n")
        for i, (kind, milli) in enumerate(self.thermal.items()):
            zone = self.root / f"sys/class/thermal/thermal_zone{i}"
            zone.mkdir(parents=True, exist_ok=True)
            (zone / "type").write_text(f"{kind}\n")
            (zone / "temp").write_text(f"{milli}\n")

    def install_benchmark_app(self) -> None:
        """Install ExecuTorch's benchmark app (org.pytorch.minibench) on this phone."""
        (self.fixture_dir / "minibench-installed").touch()
        (self.root / "data" / "data" / "org.pytorch.minibench" / "files").mkdir(
            parents=True, exist_ok=True)

    @property
    def taskset_log(self) -> Path:
        return self.fixture_dir / "taskset.log"

    def _script(self, name: str, text: str) -> None:
        path = self.bin_dir / name
        path.write_text(text)
        path.chmod(0o755)

    def set_temperature(self, kind: str, milli_c: int) -> None:
        """Heat or cool one thermal zone (what the phone's sensor would report)."""
        zone = list(self.thermal).index(kind)
        self.thermal[kind] = milli_c
        (self.root / f"sys/class/thermal/thermal_zone{zone}/temp").write_text(f"{milli_c}\n")

    def host_path(self, device_path: str) -> Path:
        """Where a device path lives on this host. normpath of an absolute path cannot climb
        above '/', so nothing outside `root` is reachable through the sync service."""
        if not device_path.startswith("/"):
            device_path = "/" + device_path
        return self.root / posixpath.normpath(device_path).lstrip("/")

    def rewrite(self, command: str) -> str:
        """The command with device paths moved into the sandbox."""
        return rewrite_command(command, str(self.root))

    def untranslate(self, output: bytes) -> bytes:
        """Command output as the phone would print it: sandbox paths back to device paths."""
        return output.replace(str(self.root).encode(), b"")

    def env(self) -> dict[str, str]:
        python_dir = os.path.dirname(sys.executable)
        return {
            "PATH": f"{self.bin_dir}:{python_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.root / "data/local/tmp"),
            "TMPDIR": str(self.root / "data/local/tmp"),
            "ANDROID_ROOT": "/system",
            "LANG": "C.UTF-8",
        } | self.extra_env
