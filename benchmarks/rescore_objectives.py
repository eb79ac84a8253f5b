"""Re-score the trained architectures of entropy_vs_loss.json with every objective and every
effectiveness variant (no retraining; issue 17, item 3's cheap part).

For each of the trained architectures (the sampled set, all of one FLOPs budget): the value of
every objective (`deepmad`, `merino`, `params`), MeRino's entropy under a grid of alpha_1/alpha_2
weights and with shared blocks counted once instead of per executed layer, and rho under both
effectiveness variants. Each score is rank-correlated with validation loss (Kendall tau and
Spearman, scipy.stats), with a bootstrap 95% confidence interval over architectures (resampled
with replacement). A good proxy correlates negatively: more of it, lower loss.

Then, as the design step would use them, each objective under each effectiveness bound
rho <= rho_0 for a grid of rho_0 (an architecture above rho_0 ranks below every one within it):
Kendall tau, and the pick (the highest-scoring effective architecture) with its regret, its loss
above the best trained one.

    python benchmarks/rescore_objectives.py                  # results/rescore_objectives.json
    python benchmarks/rescore_objectives.py --bootstrap 200  # quicker intervals
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from merino_mobile.card import Block, Card
from merino_mobile.entropy import (
    EFFECTIVENESS,
    OBJECTIVES,
    EntropySettings,
    effectiveness,
    merino_entropy,
    objective_value,
    subspace_table,
)
from merino_mobile.files import utc_now, write_json
from merino_mobile.toolchain import package_versions

SCHEMA_VERSION = 1
RESULTS = Path(__file__).resolve().parent / "results"
SOURCE = RESULTS / "entropy_vs_loss.json"
OUT = RESULTS / "rescore_objectives.json"
# (a, b) = (alpha_1, alpha_2) besides the objective's own (1, 1); only their ratio changes a ranking
WEIGHTS = ((1.0, 0.0), (1.0, 0.5), (1.0, 2.0), (1.0, 4.0), (0.0, 1.0))
RHOS = {"deepmad": (0.02, 0.03, 0.04, 0.06, 0.08, 0.12, math.inf),
        "merino": (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, math.inf)}


def cards_of(result: dict[str, Any]) -> list[Card]:
    """The trained architectures of an entropy_vs_loss result as cards of its space."""
    sp = result["space"]
    return [Card(name=r["name"], vocab=sp["vocab"], context=sp["context"],
                 head_dim=sp["head_dim"], positions=sp["positions"], tied_head=sp["tied_head"],
                 embed_width=sp["embed_width"], blocks=tuple(Block(**b) for b in r["blocks"]))
            for r in result["architectures"]]


def stored_merino(card: Card, s: EntropySettings) -> float:
    """MeRino's entropy with a shared block counted once (its stored layer), not per executed
    layer: the alternative to the objective's rule, scored for comparison."""
    once = replace(card, blocks=tuple(replace(b, depth=1, shared=False) if b.shared else b
                                      for b in card.blocks))
    return merino_entropy(once, s)


def scores(cards: list[Card]) -> dict[str, list[float]]:
    """Every proxy, by name, for each card."""
    out: dict[str, list[float]] = {}
    for name in OBJECTIVES:
        # every objective at a = b = 1 (merino's default b = 4 is scored in the loop below)
        out[name] = [objective_value(c, EntropySettings(1.0, 1.0, objective=name))
                     for c in cards]
    for a, b in WEIGHTS:
        s = EntropySettings(a=a, b=b, objective="merino")
        out[f"merino a={a:g} b={b:g}"] = [objective_value(c, s) for c in cards]
    out["merino, shared once"] = [stored_merino(c, EntropySettings(1.0, 1.0,
                                                                   objective="merino"))
                                  for c in cards]
    for v in EFFECTIVENESS:
        out[f"rho {v}"] = [effectiveness(c, v) for c in cards]
    return out


def correlate(x: list[float], y: list[float], rng: np.random.Generator,
              boots: int) -> dict[str, Any]:
    """Kendall tau and Spearman of x against y, with p-values and bootstrap 95% intervals."""
    tau, rho = stats.kendalltau(x, y), stats.spearmanr(x, y)
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    taus, rhos = [], []
    for _ in range(boots):
        i = rng.integers(0, len(xs), len(xs))
        if len(set(xs[i])) < 2 or len(set(ys[i])) < 2:
            continue  # a resample of one value has no ranking
        taus.append(stats.kendalltau(xs[i], ys[i]).statistic)
        rhos.append(stats.spearmanr(xs[i], ys[i]).statistic)

    def interval(v: list[float]) -> list[float] | None:
        v = [t for t in v if math.isfinite(t)]
        return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None

    return {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
            "kendall_ci95": interval(taus), "spearman": float(rho.statistic),
            "spearman_p": float(rho.pvalue), "spearman_ci95": interval(rhos),
            "bootstrap": len(taus)}


def constrained(cards: list[Card], losses: list[float], values: dict[str, list[float]],
                rng: np.random.Generator, boots: int) -> list[dict[str, Any]]:
    """Each objective ranked as the design step ranks it under rho <= rho_0."""
    best = min(losses)
    out = []
    for variant in EFFECTIVENESS:
        rhos = [effectiveness(c, variant) for c in cards]
        for rho0 in RHOS[variant]:
            ok = [r <= rho0 for r in rhos]
            for name in OBJECTIVES:
                v = values[name]
                order = sorted(range(len(v)), key=lambda i: (ok[i], v[i]))
                rank = [0.0] * len(v)  # ties keep equal ranks
                for k, i in enumerate(order):
                    same = k and (ok[order[k - 1]], v[order[k - 1]]) == (ok[i], v[i])
                    rank[i] = rank[order[k - 1]] if same else float(k)
                pick = max(range(len(v)), key=lambda i: (ok[i], v[i]))
                row = {"effectiveness": variant, "rho0": None if math.isinf(rho0) else rho0,
                       "objective": name, "effective": sum(ok),
                       "pick": cards[pick].name, "pick_arch": describe(cards[pick]),
                       "pick_effective": ok[pick], "pick_regret": losses[pick] - best}
                if len(set(rank)) > 1:
                    c = correlate(rank, losses, rng, boots)
                    row |= {"kendall_tau": c["kendall_tau"], "kendall_ci95": c["kendall_ci95"]}
                else:
                    row |= {"kendall_tau": None, "kendall_ci95": None}
                out.append(row)
    return out


def describe(card: Card) -> str:
    return " + ".join(f"{b.width}x{b.depth}{'s' if b.shared else ''} r{b.ffn_ratio:g}"
                      for b in card.blocks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=SOURCE, help="an entropy_vs_loss.json")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    result = json.loads(args.source.read_text())
    cards = cards_of(result)
    losses = [r["val_loss"] for r in result["architectures"]]
    rng = np.random.default_rng(args.seed)
    values = scores(cards)
    table = subspace_table()
    out = {
        "schema_version": SCHEMA_VERSION,
        "date": utc_now(),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None
                                                        else sys.argv[1:])),
        "source": {"file": str(args.source), "date": result.get("date"),
                   "architectures": len(cards), "budget_flops": result.get("budget_flops"),
                   "train_tokens": result.get("train", {}).get("tokens")},
        "subspace_table": {"file": table.source, "eps": table.eps,
                           "error_nats": table.error_nats,
                           "error_per_singular_value": table.error_per_sv},
        "bootstrap": {"resamples": args.bootstrap, "seed": args.seed, "interval": "percentile"},
        "versions": package_versions(("numpy", "scipy")),
        "proxies": {k: correlate(v, losses, rng, args.bootstrap) for k, v in values.items()},
        "constrained": constrained(cards, losses, values, rng, args.bootstrap),
        "architectures": [{"name": c.name, "arch": describe(c), "val_loss": loss}
                          | {k: v[i] for k, v in values.items()}
                          for i, (c, loss) in enumerate(zip(cards, losses, strict=True))],
    }
    write_json(args.out, out)
    print_summary(out)
    print(f"wrote {args.out}")
    return 0


def print_summary(out: dict[str, Any]) -> None:
    def ci(v: list[float] | None) -> str:
        return "-" if v is None else f"[{v[0]:+.2f}, {v[1]:+.2f}]"

    n = out["source"]["architectures"]
    print(f"{n} trained architectures; rank correlation with validation loss "
          f"(negative = more of it, lower loss)")
    print(f"{'proxy':<24}{'Kendall tau':>12}{'95% CI':>18}{'Spearman':>10}{'95% CI':>18}")
    for key, c in out["proxies"].items():
        print(f"{key:<24}{c['kendall_tau']:>+12.3f}{ci(c['kendall_ci95']):>18}"
              f"{c['spearman']:>+10.3f}{ci(c['spearman_ci95']):>18}")
    print(f"\n{'effectiveness':<14}{'rho0':>6}{'eff.':>5}  {'objective':<9}{'tau':>8}"
          f"{'95% CI':>18}  {'pick':<22}{'regret':>8}")
    for r in out["constrained"]:
        tau = "-" if r["kendall_tau"] is None else f"{r['kendall_tau']:+.3f}"
        rho0 = "none" if r["rho0"] is None else f"{r['rho0']:g}"
        print(f"{r['effectiveness']:<14}{rho0:>6}{r['effective']:>5}  {r['objective']:<9}"
              f"{tau:>8}{ci(r['kendall_ci95']):>18}  {r['pick_arch']:<22}"
              f"{r['pick_regret']:>8.3f}")


if __name__ == "__main__":
    sys.exit(main())
