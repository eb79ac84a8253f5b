"""How a decode layer's weights are kept out of the caches, against the truth of a deep program.

    python benchmarks/cold_weights.py [--width 512] [--ratio 1.0] [--quant int8] [--deep 32]

A micro-benchmark that calls one layer again and again times it with its weights in the caches;
inside a whole model they stream from memory every token. This exports one int8 decode layer (KV
cache of --context slots) three ways and times each on the host device, through the same worker
and stopping rule as `profile`:

- hot: one instance called again and again;
- copies: MAX_COPIES distinct layers in one method (what phones get), time / copies;
- loaded: the single instance loaded `copies(replicated=True)` times, called in turn (the host);
- deep: --deep distinct layers in one method, time / --deep: a model that streams its weights,
  the number the other two should match.

Prints a table and writes benchmarks/results/cold_weights.json. The deep export takes minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--ratio", type=float, default=1.0)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--quant", default="int8")
    ap.add_argument("--deep", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the four measurements")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                    "cold_weights.json")
    args = ap.parse_args()

    from merino_mobile.device import open_device
    from merino_mobile.device.base import MethodSpec
    from merino_mobile.device.profiles import read_profile
    from merino_mobile.export.executorch import lower_to_pte
    from merino_mobile.latency.grid import make_grid
    from merino_mobile.latency.micro import MAX_COPIES, copies, micro_model, weight_bytes
    from merino_mobile.latency.store import Point

    grid = make_grid(ROOT / "search" / "default.toml", "quick", [args.context], [])
    p = Point("layer", "decode", width=args.width, ffn_ratio=args.ratio,
              heads=args.width // grid.head_dim, context=args.context)
    loaded = copies(p, args.quant, replicated=True)
    work = Path(tempfile.mkdtemp(prefix="cold-weights-"))
    programs, export_s = {}, {}
    for name, n in (("one", 1), ("copies", MAX_COPIES), ("deep", args.deep)):
        module, example, specs = micro_model(p, grid, args.quant, n)
        t0 = time.perf_counter()
        programs[name] = (lower_to_pte({"m0": (module, example, None)}, args.quant,
                                       work / f"{name}.pte"), n, specs)
        export_s[name] = round(time.perf_counter() - t0, 1)
        print(f"exported {name} ({n} layer{'s' * (n > 1)}) in {export_s[name]} s", flush=True)

    dev = open_device(read_profile(ROOT / "devices" / "host.toml"))
    m = dev.profile.measure
    ways = (("hot", "one", 1, 1), (f"copies ({MAX_COPIES} in the method)", "copies", 1,
                                   MAX_COPIES),
            (f"loaded ({loaded} instances)", "one", loaded, 1),
            (f"deep ({args.deep} in the method)", "deep", 1, args.deep))
    rounds: dict[str, list[float]] = {w[0]: [] for w in ways}
    for _ in range(args.repeat):  # interleaved rounds: drift hits every way alike
        for label, prog, instances, per_call in ways:
            path, _, specs = programs[prog]
            req = m.request("executorch", (MethodSpec("m0", specs, instances),))
            (r,) = dev.benchmark(dev.prepare(path), req).results
            if not r.ok:
                raise SystemExit(f"{label}: {r.error}")
            rounds[label].append(r.median / per_call)
    dev.cleanup()
    truth = min(rounds[ways[-1][0]])
    rows = []
    print(f"\nint8 decode layer, width {args.width}, ffn ratio {args.ratio:g}, context "
          f"{args.context}: {weight_bytes(p, args.quant) / 1e6:.2f} MB of weights")
    print(f"{'way':<28} {'ms per layer':>13} {'vs deep':>8}")
    for label, *_ in ways:
        ms = min(rounds[label])  # the least disturbed round
        rows.append({"way": label, "ms_per_layer": ms, "rounds_ms": rounds[label],
                     "vs_deep": ms / truth})
        print(f"{label:<28} {ms:>13.3f} {ms / truth:>7.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "schema_version": 1, "point": p.key, "quant": args.quant,
        "weight_bytes": weight_bytes(p, args.quant), "export_s": export_s, "rows": rows,
        "fingerprint": dev.fingerprint("executorch", args.quant).to_json()}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
