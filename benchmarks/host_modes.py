"""Does this host run at one speed? One decode step timed in many short windows (issue 16).

Each window is one benchmark call on the device (a fresh runtime process on the host: load,
warm-up, then timed calls for --seconds), and the window's median is what one bench of a few
calls would report. The artifacts are timed in turn, window after window (A B, B A, ...), so
a change of pace touches them alike. Printed per artifact: every window's median, the median
over windows, the fastest and slowest window, and, when the slowest is at least --two times the
fastest, the two speeds: the windows split at the geometric mean of the two, `slow_ms` and
`fast_ms` the median of each side and `fast_share` the share of windows on the fast side.

    python benchmarks/host_modes.py --workspace WS --artifact A.pte [--artifact B.pte]
        [--windows 20] [--seconds 0.5] [--position 192]

Writes benchmarks/results/host_modes.json: `artifacts` (per artifact: `windows_ms`, `median_ms`,
`min_ms`, `max_ms`, `speeds` (1 or 2), `slow_ms`, `fast_ms`, `fast_share`, `cut_ms`), `settings` and
`machine`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from merino_mobile.deploy.bench import decode_window_request, round_order
from merino_mobile.device.base import TWO_SPEEDS, two_speeds
from merino_mobile.errors import UserError
from merino_mobile.files import run_facts, utc_now, write_json
from merino_mobile.target import resolve_target
from merino_mobile.toolchain import quiet_dependencies
from merino_mobile.workspace import Workspace

HERE = Path(__file__).resolve().parent
COMMAND = "python benchmarks/host_modes.py"


def window(dev: Any, handle: Any, position: int, seconds: float) -> tuple[float, int]:
    """One window: the median ms of decode steps at `position` timed for `seconds`."""
    req = decode_window_request(dev, "executorch", position, seconds)
    r = dev.benchmark(handle, req).results[0]
    if not r.ok:
        raise UserError(f"the decode step failed: {r.error}")
    return statistics.median(r.samples_ms), len(r.samples_ms)


def speeds(windows_ms: list[float], two: float) -> dict[str, Any]:
    """The windows' statistics and their speeds (`base.two_speeds`)."""
    return {"windows_ms": windows_ms, "median_ms": statistics.median(windows_ms),
            "min_ms": min(windows_ms), "max_ms": max(windows_ms)} | two_speeds(windows_ms, two)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, required=True,
                    help="a workspace with the host's ExecuTorch table (its fingerprint)")
    ap.add_argument("--artifact", type=Path, action="append", required=True,
                    help="an ExecuTorch .pte of a decoder (repeatable)")
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=0.5, help="timed seconds per window")
    ap.add_argument("--position", type=int, default=192, help="the decode step's position")
    ap.add_argument("--two", type=float, default=TWO_SPEEDS,
                    help="slowest over fastest window from which there are two speeds")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "host_modes.json")
    args = ap.parse_args()
    quiet_dependencies()
    if args.windows < 1 or args.seconds <= 0 or args.two <= 1:
        sys.exit("--windows must be at least 1, --seconds positive, --two above 1")
    for a in args.artifact:
        if not a.is_file() or a.suffix != ".pte":
            sys.exit(f"--artifact {a}: not an ExecuTorch .pte file; export one with "
                     f"`merino-mobile export CARD --format executorch`")
    t0 = time.perf_counter()
    ws = Workspace(args.workspace.resolve())
    try:
        target = resolve_target(ws, "host", "executorch", "int8")
        dev = target.open()
    except UserError as e:
        sys.exit(f"error: {e}")
    windows: dict[int, list[float]] = {i: [] for i in range(len(args.artifact))}
    try:
        handles = [dev.prepare(a) for a in args.artifact]
        for w in range(args.windows):
            for i in round_order(len(handles), w):
                ms, n = window(dev, handles[i], args.position, args.seconds)
                windows[i].append(ms)
                print(f"window {w + 1}/{args.windows} {args.artifact[i].parent.name}: "
                      f"{ms:.3f} ms ({n} steps)", flush=True)
    except UserError as e:
        sys.exit(f"error: {e}")
    finally:
        dev.cleanup()
    out: dict[str, Any] = {}
    print(f"\n{'artifact':<44} {'median':>8} {'min':>8} {'max':>8} {'slow':>8} {'fast':>8} "
          f"{'fast share':>10}")
    for i, a in enumerate(args.artifact):
        r = speeds(windows[i], args.two)
        out[str(a)] = r
        fast = "-" if r["fast_ms"] is None else f"{r['fast_ms']:.3f}"
        print(f"{a.parent.name[:44]:<44} {r['median_ms']:>8.3f} {r['min_ms']:>8.3f} "
              f"{r['max_ms']:>8.3f} {r['slow_ms']:>8.3f} {fast:>8} "
              f"{100 * r['fast_share']:>9.0f}%")
    write_json(args.out, {"schema_version": 1, "kind": "merino-mobile-host-modes",
                          "date": utc_now(), "artifacts": out,
                          "settings": {"windows": args.windows, "seconds": args.seconds,
                                       "position": args.position, "two": args.two},
                          **run_facts(COMMAND, sys.argv[1:], t0)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
