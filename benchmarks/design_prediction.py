"""How well latency tables predict the cards of a side-by-side `compare`: every table x every card.

A design is chosen by the solver *because* its table says it is fast, so a table's errors are not
random for it: cells measured low attract the solver. This script puts the decode latency that
each given table predicts for each compared card (the cache-aware prediction `deploy` reports)
next to the latency `compare` measured, with the error in percent. Give it tables measured in
different sessions, and designs made from each, to see whether a table under-predicts its own
design more than the others do.

    python benchmarks/design_prediction.py --compare WS/build/compare-.../compare.json \
        --table T1=WS/devices/host/lut-executorch-int8.json --table T2=OTHER/devices/... \
        [--card D1=WS/models/merino-demo.json ...] [--out results/design_prediction.json]

The measured latency is the compare row's (1000 / decode tokens/s, the median of 15 runs with
the defaults). Cards are found through the compare's reports (each export folder has card.json),
or `--card NAME=FILE`. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from merino_mobile.card import load_card
from merino_mobile.latency import predict_latency
from merino_mobile.latency.table import read_lut

HERE = Path(__file__).resolve().parent


def named(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {text!r}")
    return name, Path(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", type=Path, required=True, help="a compare.json")
    ap.add_argument("--table", type=named, action="append", required=True, help="NAME=LUT.json")
    ap.add_argument("--card", type=named, action="append", default=[],
                    help="CARD=FILE: the card file of a compared card (default: its export's)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "design_prediction.json")
    args = ap.parse_args()
    cmp = json.loads(args.compare.read_text())
    context = cmp["prompt"] + cmp["generate"]
    given = dict(args.card)
    tables = {name: read_lut(path) for name, path in args.table}
    rows = []
    for row in cmp["rows"]:
        path = given.get(row["card"])
        if path is None:
            report = json.loads((Path(row["report"]).parent / "report.json").read_text())
            path = Path(report["artifact"]).parent / "card.json"
        card = load_card(path)
        # the median of an odd number of runs: 1000 / median t/s is the median ms/token
        measured = 1000 / row["decode_tokens_per_s"]
        preds = {t: predict_latency(card, lut, context, "decode") for t, lut in tables.items()}
        rows.append({"card": row["card"], "card_file": str(path), "params": row["params"],
                     "blocks": card.to_json()["blocks"], "measured_ms": measured,
                     "predicted_ms": preds,
                     "error_pct": {t: 100 * (p - measured) / measured for t, p in preds.items()}})
    print(f"{'card':<18} {'measured':>9}  " + "  ".join(f"{t:>18}" for t in tables))
    for r in rows:
        cells = [f"{r['predicted_ms'][t]:8.2f} ({r['error_pct'][t]:+5.1f}%)" for t in tables]
        print(f"{r['card']:<18} {r['measured_ms']:>9.2f}  " + "  ".join(f"{c:>18}" for c in cells))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "schema_version": 1, "compare": str(args.compare), "compare_date": cmp["date"],
        "rounds": cmp.get("rounds"), "repeat": cmp["repeat"], "context": context,
        "tables": {name: {"file": str(path), "created": tables[name].created}
                   for name, path in args.table},
        "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
