"""Forked against fresh ExecuTorch workers on the host: the same numbers, sooner?

The host runs every benchmark in a worker process of its own. A fresh worker imports torch and the
ExecuTorch runtime before it loads anything (seconds); on Linux the host forks its ExecuTorch
workers from a process that has made those imports once (`merino_mobile.device.host`). This
script benches one decoder both ways in interleaved rounds (fresh then forked, forked then fresh,
...), one benchmark call per worker, and prints per way the medians over rounds of:

- `call_s`: the wall time of the whole benchmark call (start the worker, load, time, report);
- `step_ms`: the decode step's median (what a profile or a bench records);
- `load_ms`: the program's load time, as the worker reports it;
- `peak_rss_mb`: the worker's peak resident memory;

and the forked / fresh ratio of each. The decoder is exported here (int8, the host table's
quantization) unless --artifact gives a .pte of one.

    python benchmarks/worker_start.py [--rounds 10] [--seconds 0.5] [--artifact A.pte]

Writes benchmarks/results/worker_start.json: `ways` (per way: the per-round lists and their
medians), `ratios` (forked / fresh of each median), `settings`, `machine`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from merino_mobile.card import Block, Card
from merino_mobile.deploy.bench import decode_window_request, round_order
from merino_mobile.device import open_device
from merino_mobile.device.profiles import load_profile
from merino_mobile.errors import UserError
from merino_mobile.files import run_facts, utc_now, write_json
from merino_mobile.toolchain import quiet_dependencies
from merino_mobile.workspace import Workspace

HERE = Path(__file__).resolve().parent
COMMAND = "python benchmarks/worker_start.py"
WAYS = ("fresh", "forked")
# a small decoder of the kind the host designs (about 30M parameters, most in the embedding)
CARD = Card(name="worker-start", vocab=32000, context=256, head_dim=64,
            blocks=(Block(512, 4.0, 8, 8),))
KEYS = ("call_s", "step_ms", "load_ms", "peak_rss_mb")


def export(path: Path) -> Path:
    from merino_mobile.export.executorch import export_executorch
    from merino_mobile.model import build_decoder

    return export_executorch(build_decoder(CARD, seed=0), "int8", path, prompt_len=8)


def one_call(dev: Any, handle: Any, position: int, seconds: float) -> dict[str, float]:
    """One benchmark call: a decode step at `position` timed for `seconds`."""
    req = decode_window_request(dev, "executorch", position, seconds)
    t0 = time.perf_counter()
    r = dev.benchmark(handle, req).results[0]
    call_s = time.perf_counter() - t0
    if not r.ok:
        raise UserError(f"the decode step failed: {r.error}")
    return {"call_s": call_s, "step_ms": statistics.median(r.samples_ms),
            "load_ms": float(r.load_ms or 0.0), "peak_rss_mb": (r.peak_rss_bytes or 0) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="benchmark calls per way")
    ap.add_argument("--seconds", type=float, default=0.5, help="timed seconds per call")
    ap.add_argument("--position", type=int, default=128, help="the decode step's position")
    ap.add_argument("--artifact", type=Path, help="an ExecuTorch .pte of a decoder "
                    "(default: export a 512-wide, 8-layer int8 decoder here)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "worker_start.json")
    args = ap.parse_args()
    quiet_dependencies()
    if args.rounds < 1 or args.seconds <= 0 or not 0 <= args.position < CARD.context:
        sys.exit(f"--rounds must be at least 1, --seconds positive, --position in "
                 f"0..{CARD.context - 1}")
    if args.artifact is not None and (not args.artifact.is_file() or
                                      args.artifact.suffix != ".pte"):
        sys.exit(f"--artifact {args.artifact}: not an ExecuTorch .pte file; export one with "
                 f"`merino-mobile export CARD --format executorch`")
    if sys.platform != "linux":
        sys.exit("forked workers are Linux only: on this system every worker starts afresh")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp))
        artifact = args.artifact
        if artifact is None:
            print("exporting the decoder (int8)", flush=True)
            artifact = export(Path(tmp) / "decoder.pte")
        try:
            dev = open_device(load_profile(ws, "host"), "executorch")
        except UserError as e:
            sys.exit(f"error: {e}")
        rows: dict[str, list[dict[str, float]]] = {w: [] for w in WAYS}
        try:
            handle = dev.prepare(artifact)
            forked = dev.forked_runtimes
            # the forkserver starts once per process, on its first use: not part of a round
            one_call(dev, handle, args.position, args.seconds)
            for r in range(args.rounds):
                for i in round_order(len(WAYS), r):
                    way = WAYS[i]
                    dev.forked_runtimes = forked if way == "forked" else ()
                    row = one_call(dev, handle, args.position, args.seconds)
                    rows[way].append(row)
                    print(f"round {r + 1}/{args.rounds} {way:<6}: call {row['call_s']:.2f} s, "
                          f"step {row['step_ms']:.3f} ms, load {row['load_ms']:.1f} ms, "
                          f"peak {row['peak_rss_mb']:.0f} MB", flush=True)
        except UserError as e:
            sys.exit(f"error: {e}")
        finally:
            dev.cleanup()
    ways = {w: {k: [row[k] for row in rows[w]] for k in KEYS} for w in WAYS}
    medians = {w: {k: statistics.median(ways[w][k]) for k in KEYS} for w in WAYS}
    ratios = {k: medians["forked"][k] / medians["fresh"][k] for k in KEYS}
    print(f"\n{'':<8}" + "".join(f"{k:>13}" for k in KEYS))
    for w in WAYS:
        print(f"{w:<8}" + "".join(f"{medians[w][k]:>13.3f}" for k in KEYS))
    print(f"{'ratio':<8}" + "".join(f"{ratios[k]:>13.3f}" for k in KEYS))
    write_json(args.out, {"schema_version": 1, "kind": "merino-mobile-worker-start",
                          "date": utc_now(), "card": CARD.name if args.artifact is None
                          else str(args.artifact),
                          "ways": {w: ways[w] | {"median": medians[w]} for w in WAYS},
                          "ratios": ratios,
                          "settings": {"rounds": args.rounds, "seconds": args.seconds,
                                       "position": args.position},
                          **run_facts(COMMAND, sys.argv[1:], t0)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
