"""How well the host's latency table predicts whole models: share within +-10%, MAPE.

    python benchmarks/lut_accuracy.py [--n 30] [--context 256] [--quant int8] [--workspace DIR]

1. Profiles the default search space's quick grid on the `host` device (ExecuTorch, --quant;
   decode contexts 128 and 512, so --context 256 is between them, as for a user of `profile`
   then `design`) in a fresh workspace (or --workspace, which resumes and reuses its exports),
   timing the whole profile.
2. Draws --n random architectures of the default space (seeded), builds each decoder with a KV
   cache of --context positions and exports it with the project's exporter (`export_executorch`),
   several side by side (`merino_mobile.parallel`), after the profile and timed apart from it.
3. Measures one decode step of each at that context on the same host device, the same way, and
   compares with `predict_latency(card, lut, context)`; prints a table and writes
   benchmarks/results/lut_accuracy.json.

Whole models are capped at --max-params (default 60M) and --max-depth (12) so 30 exports fit in
minutes on a small machine; the architectures are otherwise uniform over the space's choices.
Exports are cached in the workspace by content; `--export-only` fills that cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def random_card(space, rng: random.Random, name: str, max_params: int, max_depth: int):
    from merino_mobile import accounting
    from merino_mobile.space import Choice

    while True:
        n = rng.randint(max(1, space.min_blocks), space.max_blocks)
        widths = sorted(rng.choice(space.widths) for _ in range(n))
        if space.order == "any":
            rng.shuffle(widths)
        arch = []
        for w in widths:
            d = rng.choice(list(space.depths))
            arch.append(Choice(w, rng.choice(space.ffn_ratios), d,
                               space.sharing and d > 1 and rng.random() < 0.5))
        card = space.to_card(arch, name)
        if card.depth <= max_depth and accounting.params(card) <= max_params:
            return card


def card_path(build: Path, card, context: int, quant: str) -> Path:
    """Where a card's .pte is cached: one file per content (card, context, quantization)."""
    key = hashlib.sha256(json.dumps([card.to_json(), context, quant],
                                    sort_keys=True).encode()).hexdigest()[:16]
    return build / f"{card.name}-{key}.pte"


def export_card(card, path: Path, context: int, quant: str) -> float:
    """Export one whole model (a `merino_mobile.parallel` job); seconds it took."""
    from merino_mobile.export.executorch import export_executorch
    from merino_mobile.model import build_decoder

    model = build_decoder(card, cache_len=context, seed=0)
    te = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = export_executorch(model, quant, path.with_suffix(f".partial-{os.getpid()}.pte"),
                            prompt_len=8)
    tmp.replace(path)
    return time.perf_counter() - te


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--grid", default="quick")
    ap.add_argument("--grid-context", type=int, action="append", default=[],
                    help="Decode context the profile measures (repeatable; default the grid's "
                         "own, quick 128 and 512: the whole models' --context is interpolated)")
    ap.add_argument("--quant", default="int8")
    ap.add_argument("--max-params", type=float, default=60e6)
    ap.add_argument("--max-depth", type=int, default=12)
    ap.add_argument("--workspace", type=Path, default=None)
    ap.add_argument("--export-only", action="store_true",
                    help="Only export the whole models (into the workspace's cache), e.g. while "
                         "another run profiles.")
    ap.add_argument("--stored", action="store_true",
                    help="Do not profile: build the table from the measurements already stored "
                         "in the workspace (decode terms suffice here).")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                    "lut_accuracy.json")
    args = ap.parse_args()

    from merino_mobile import accounting
    from merino_mobile.device import open_device
    from merino_mobile.device.base import BenchRequest, InputSpec, MethodSpec
    from merino_mobile.device.profiles import load_profile
    from merino_mobile.latency import predict_latency
    from merino_mobile.parallel import Job, run_jobs
    from merino_mobile.profile import describe_grid, make_grid, run_profile
    from merino_mobile.space import load_space
    from merino_mobile.workspace import Workspace

    root = args.workspace or Path(tempfile.mkdtemp(prefix="lut-accuracy-"))
    (root / "devices").mkdir(parents=True, exist_ok=True)
    if not (root / "devices" / "host.toml").exists():
        shutil.copy(ROOT / "devices" / "host.toml", root / "devices" / "host.toml")
    ws = Workspace.resolve(root)
    space_path = ROOT / "search" / "default.toml"
    grid = make_grid(space_path, args.grid, args.grid_context)
    print(describe_grid(grid), flush=True)

    def progress(msg: str, done: int, total: int) -> None:
        print(f"  [{done}/{total}] {msg}", flush=True)

    space = load_space(space_path)
    rng = random.Random(args.seed)
    cards = [random_card(space, rng, f"rand{i}", int(args.max_params), args.max_depth)
             for i in range(args.n)]
    build = ws.state / "bench-models"

    def export_all() -> tuple[dict[str, float], float]:
        """Export the missing whole models, side by side (`merino_mobile.parallel`); the
        seconds each took, and the wall time of all."""
        missing = [c for c in cards if not card_path(build, c, args.context, args.quant).exists()]
        te = time.perf_counter()
        secs = run_jobs([Job(c.name, export_card, (c, card_path(build, c, args.context,
                                                                    args.quant),
                                                   args.context, args.quant), cost=c.depth)
                         for c in missing], progress=progress) if missing else []
        for c, sec in zip(missing, secs, strict=True):
            print(f"{c.name}: exported in {sec:.0f} s", flush=True)
        return dict(zip((c.name for c in missing), secs, strict=True)), \
            time.perf_counter() - te

    if args.export_only:
        export_all()
        return 0

    if args.stored:
        from merino_mobile.device.host import HostDevice
        from merino_mobile.lut import Lut
        from merino_mobile.store import Store

        fp = HostDevice(load_profile(ws, "host")).fingerprint("executorch", args.quant)
        store = Store.open(ws.state)
        rows_ = store.rows(fp.key, "executorch", args.quant)
        store.close()
        lut = Lut.from_rows(rows_, fp, "executorch", args.quant)
        profile_s, export_s, reused = None, None, sum(r.ok for r in rows_)
        print(f"table from {reused} stored points", flush=True)
    else:
        t0 = time.perf_counter()
        report = run_profile(ws, "host", "executorch", args.quant, grid, progress=progress)
        profile_s, export_s, reused = time.perf_counter() - t0, report.export_s, report.skipped
        print(f"profiled in {profile_s:.0f} s (export {report.export_s:.0f} s), "
              f"{report.measured} measured, {report.skipped} reused, {len(report.failed)} "
              f"failed", flush=True)
        from merino_mobile.lut import read_lut

        lut = read_lut(Path(report.lut))

    export_secs, models_export_wall = export_all()
    device = open_device(load_profile(ws, "host"))
    prof = device.profile.measure
    rows = []
    for card in cards:
        pte = card_path(build, card, args.context, args.quant)
        model_export_s = export_secs.get(card.name, 0.0)
        # one decode step: a token at position context-1, attending the whole cache
        spec = MethodSpec("forward", (InputSpec((1, 1), "int64", 7),
                                      InputSpec((1,), "int64", args.context - 1)))
        req = BenchRequest("executorch", (spec,), prof.warmup, prof.min_repeats,
                           prof.max_repeats, prof.target_spread, max(prof.max_seconds, 2.0),
                           prof.timeout_s)
        res = device.benchmark(device.prepare(pte), req)["forward"]
        predicted = predict_latency(card, lut, args.context)
        row = {"card": card.to_json(), "params": accounting.params(card), "depth": card.depth,
               "widths": [b.width for b in card.blocks], "predicted_ms": predicted,
               "measured_ms": res.median if res.ok else None, "p10_ms": res.p10 if res.ok else None,
               "p90_ms": res.p90 if res.ok else None, "error": res.error,
               "export_s": model_export_s}
        if res.ok:
            row["error_pct"] = 100 * (predicted - res.median) / res.median
        rows.append(row)
        print(f"{card.name:7s} widths {row['widths']!s:28s} depth {card.depth:2d} "
              f"params {row['params'] / 1e6:6.1f}M  measured "
              f"{row['measured_ms'] or float('nan'):8.2f} ms  predicted {predicted:8.2f} ms  "
              f"{row.get('error_pct', float('nan')):+6.1f}%", flush=True)
    good = [r for r in rows if "error_pct" in r]
    errs = [abs(r["error_pct"]) for r in good]
    summary = {
        "schema_version": 1, "device": "host", "runtime": "executorch", "quant": args.quant,
        "context": args.context, "grid": args.grid, "grid_points": len(grid.points()),
        "profile_wall_s": profile_s, "profile_export_s": export_s,
        "profile_reused_points": reused, "models_export_wall_s": models_export_wall,
        "models": len(rows), "measured": len(good),
        "within_10pct": sum(e <= 10 for e in errs) / len(errs) if errs else None,
        "mape_pct": statistics.fmean(errs) if errs else None,
        "median_ape_pct": statistics.median(errs) if errs else None,
        "max_ape_pct": max(errs) if errs else None,
        "bias_pct": statistics.fmean(r["error_pct"] for r in good) if good else None,
        "fingerprint": lut.fingerprint.to_json(), "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(args.out)
    print()
    print(f"| models | within +-10% | MAPE | median APE | max APE | bias | profile wall "
          f"({summary['grid_points']} points) |")
    print("|---|---|---|---|---|---|---|")
    wall = "stored" if profile_s is None else f"{profile_s / 60:.1f} min"
    if errs:
        print(f"| {len(good)} | {100 * summary['within_10pct']:.0f}% | {summary['mape_pct']:.1f}% "
              f"| {summary['median_ape_pct']:.1f}% | {summary['max_ape_pct']:.1f}% | "
              f"{summary['bias_pct']:+.1f}% | {wall} |")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
