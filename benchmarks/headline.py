"""The paper's headline on this host: MeRino designs vs OPT-350M and OPT-125M, benched side by side.

MeRino (arXiv 2403.07921) reports its 64M model 4.9x faster than OPT-350M with 5.5x fewer
parameters on a Jetson Nano. Here, with ExecuTorch int8 on the host (random weights: speed and size
do not depend on them):

1. designs `merino-64m` with `design --params 64M` (exact solver, default space); with
   --latency-card CARD (for example a demo workspace's models/merino-demo.json, designed under a
   latency budget) that design is compared too;
2. exports every card side by side (`merino_mobile.parallel`, reusing exports already in the
   workspace's build/ folder: `merino-mobile demo` leaves OPT-350M's there);
3. benches the artifacts in --rounds interleaved rounds (card a, b, c, d, then again), so each
   ratio comes from measurements taken side by side in one run, and reports the median round:
   decode tokens/s, TTFT, size and ratios against OPT-350M.

    python benchmarks/headline.py [--workspace benchmarks/build/headline] [--rounds 3]
        [--latency-card /path/to/merino-demo.json]

Prints a table and writes benchmarks/results/headline.json. Slow: exporting OPT-350M takes minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from merino_mobile import accounting
from merino_mobile.bench import bench_artifact
from merino_mobile.card import load_card
from merino_mobile.deploy import deploy_dir, export_for_deploy
from merino_mobile.design import design_card
from merino_mobile.entropy import EntropySettings
from merino_mobile.parallel import Job, run_jobs
from merino_mobile.space import load_space
from merino_mobile.workspace import Workspace

HERE = Path(__file__).resolve().parent
PAPER = {"speedup_vs_opt350m": 4.9, "params_ratio_vs_opt350m": 5.5, "device": "Jetson Nano"}
BASELINE = "opt-350m"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=HERE / "build" / "headline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="bench runs per card per round")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--generate", type=int, default=128)
    ap.add_argument("--latency-card", type=Path, default=None,
                    help="a latency-budget design to compare as well (a card JSON)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "headline.json")
    args = ap.parse_args()
    ws = Workspace.resolve(args.workspace)
    t0 = time.perf_counter()
    context = args.prompt + args.generate
    space = load_space(ws.find("search", "default", ".toml"))
    d, card, path = design_card(ws, space, {"params": 64e6}, EntropySettings(), context, "int8",
                                None, "exact", {}, name="merino-64m", force=True)
    cards = [card]
    if args.latency_card:
        cards.append(load_card(args.latency_card))
    cards += [load_card(ws.find("models", n, ".json")) for n in ("opt-125m", BASELINE)]

    out_dirs = {c.name: deploy_dir(ws, c.name, "host", "executorch", "int8") / "artifact"
                for c in cards}
    te = time.perf_counter()
    run_jobs([Job(c.name, export_for_deploy, (c, out_dirs[c.name], "executorch", "int8",
                                              context), cost=c.depth) for c in cards],
             progress=lambda m, k, n: print(f"  [{k}/{n}] {m}", flush=True))
    export_s = time.perf_counter() - te

    rounds: dict[str, list] = {c.name: [] for c in cards}
    for r in range(args.rounds):  # interleaved: drift and load hit every card alike
        for c in cards:
            b = bench_artifact(ws, out_dirs[c.name] / "model.pte", "host", prompt=args.prompt,
                               generate=args.generate, repeat=args.repeat)
            rounds[c.name].append(b)
            print(f"  round {r + 1}: {c.name} {b.decode_tokens_per_s.median:.1f} t/s", flush=True)

    def med(name: str, attr: str) -> float:
        return statistics.median(getattr(b, attr).median for b in rounds[name])

    base_tps = med(BASELINE, "decode_tokens_per_s")
    base = next(c for c in cards if c.name == BASELINE)
    rows = []
    for c in cards:
        size = rounds[c.name][0].size_bytes
        tps = med(c.name, "decode_tokens_per_s")
        rows.append({
            "card": c.name, "params": accounting.params(c), "size_bytes": size,
            "ttft_ms": med(c.name, "ttft_ms"), "decode_tokens_per_s": tps,
            "decode_tokens_per_s_rounds": [b.decode_tokens_per_s.median for b in rounds[c.name]],
            "ms_per_token": 1000 / tps, "speedup": tps / base_tps,
            "params_ratio": accounting.params(base) / accounting.params(c),
            "size_ratio": rounds[BASELINE][0].size_bytes / size,
        })
    print(f"\n{'card':<12} {'params':>8} {'size MB':>8} {'TTFT ms':>9} {'decode t/s':>11} "
          f"{'speedup':>8} {'fewer params':>13} {'smaller':>8}")
    for r in rows:
        print(f"{r['card']:<12} {r['params'] / 1e6:>7.1f}M {r['size_bytes'] / 1e6:>8.1f} "
              f"{r['ttft_ms']:>9.1f} {r['decode_tokens_per_s']:>11.1f} {r['speedup']:>7.2f}x "
              f"{r['params_ratio']:>12.2f}x {r['size_ratio']:>7.2f}x")
    print(f"paper (MeRino-64M vs OPT-350M, {PAPER['device']}): "
          f"{PAPER['speedup_vs_opt350m']}x speed, {PAPER['params_ratio_vs_opt350m']}x fewer "
          f"parameters")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "schema_version": 2, "paper": PAPER, "baseline": BASELINE,
        "design": {"card": str(path), "params": accounting.params(card),
                   "entropy": d.metrics.entropy},
        "prompt": args.prompt, "generate": args.generate, "rounds": args.rounds,
        "repeat": args.repeat, "rows": rows,
        "fingerprint": rounds[BASELINE][0].fingerprint, "export_wall_s": round(export_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
