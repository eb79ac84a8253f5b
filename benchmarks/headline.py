"""The paper's headline on this host: a ~64M-parameter MeRino design vs OPT-350M and OPT-125M.

MeRino (arXiv 2403.07921) reports its 64M model 4.9x faster than OPT-350M with 5.5x fewer
parameters on a Jetson Nano. Here: `design --params 64M` (exact solver, default space), then
`compare` of the design, OPT-125M and OPT-350M on the host with ExecuTorch int8 (random weights:
speed and size do not depend on them), decode tokens/s, TTFT, size and the ratios against OPT-350M.

    python benchmarks/headline.py [--workspace benchmarks/build/headline] [--repeat 5]

Prints a table and writes benchmarks/results/headline.json. Slow: exporting OPT-350M takes minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from merino_mobile import accounting
from merino_mobile.card import load_card
from merino_mobile.deploy import compare
from merino_mobile.design import design_card
from merino_mobile.entropy import EntropySettings
from merino_mobile.space import load_space
from merino_mobile.workspace import Workspace

HERE = Path(__file__).resolve().parent
PAPER = {"speedup_vs_opt350m": 4.9, "params_ratio_vs_opt350m": 5.5, "device": "Jetson Nano"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=HERE / "build" / "headline")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--generate", type=int, default=128)
    ap.add_argument("--force", action="store_true", help="re-measure every card")
    args = ap.parse_args()
    ws = Workspace.resolve(args.workspace)
    t0 = time.perf_counter()
    space = load_space(ws.find("search", "default", ".toml"))
    d, card, path = design_card(ws, space, {"params": 64e6}, EntropySettings(),
                                args.prompt + args.generate, "int8", None, "exact", {},
                                name="merino-64m", force=True)
    cards = [card, load_card(ws.find("models", "opt-125m", ".json")),
             load_card(ws.find("models", "opt-350m", ".json"))]
    result = compare(ws, cards, "host", "executorch", "int8", baseline="opt-350m",
                     prompt=args.prompt, generate=args.generate, repeat=args.repeat,
                     force=True, remeasure=args.force, predict_latency=False,
                     command="benchmarks/headline.py")
    print(f"{'card':<12} {'params':>8} {'size MB':>8} {'TTFT ms':>9} {'decode t/s':>11} "
          f"{'speedup':>8} {'params ratio':>13} {'size ratio':>11}")
    for r in result["rows"]:
        print(f"{r['card']:<12} {r['params'] / 1e6:>7.1f}M {r['size_bytes'] / 1e6:>8.1f} "
              f"{r['ttft_ms']:>9.1f} {r['decode_tokens_per_s']:>11.1f} {r['speedup']:>7.2f}x "
              f"{r['params_ratio']:>12.2f}x {r['size_ratio']:>10.2f}x")
    print(f"paper (MeRino-64M vs OPT-350M, {PAPER['device']}): "
          f"{PAPER['speedup_vs_opt350m']}x speed, {PAPER['params_ratio_vs_opt350m']}x fewer "
          f"parameters")
    out = HERE / "results" / "headline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "schema_version": 1, "paper": PAPER, "design": {"card": str(path),
                                                       "params": accounting.params(card),
                                                       "entropy": d.metrics.entropy},
        "compare": result, "wall_s": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
