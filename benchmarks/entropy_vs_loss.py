"""Does entropy rank architectures of equal cost by their loss after training? (issue 6)

Samples architectures from a reduced MeRino space (byte vocabulary, widths 64..256) whose FLOPs per
token lie within +-10% of one budget, trains each on the same tokens of the same corpus, and
reports the rank correlations (Kendall tau, Spearman) of validation loss with three training-free
proxies: DeepMAD entropy (a = b = 1, rho_0 0.03: the default when it ran), decoder parameter count
(LiteTransformerSearch's proxy) and FLOPs. A good proxy correlates negatively with loss (more of
it, lower loss).

It then trains the MP-optimal design (exact solver, same budget, those deepmad settings) and a
uniform OPT-style baseline scaled to the same budget (one block, FFN ratio 4, no sharing,
depth/width closest to OPT-125M's 12/768), and re-scores the trained set for a grid of rho_0 and
a/b weights (no retraining): an architecture above rho_0 ranks below every one within it.

    python benchmarks/entropy_vs_loss.py                 # the default run (see --help)
    python benchmarks/entropy_vs_loss.py --archs 10 --tokens 150000   # a medium run
    python benchmarks/entropy_vs_loss.py --reduced       # CI smoke test: 2 archs, 512 tokens

Writes benchmarks/results/entropy_vs_loss.json (schema_version 1) and a scatter plot PNG beside
it (entropy vs validation loss).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from scipy import stats

from merino_mobile import accounting
from merino_mobile.card import Card
from merino_mobile.corpus import load_split
from merino_mobile.design import Budgets, Problem, solve
from merino_mobile.entropy import DEEPMAD, DEFAULT_RHO, EntropySettings, effectiveness, entropy
from merino_mobile.space import Choice, Space
from merino_mobile.tokenizer import Tokenizer
from merino_mobile.train import TrainConfig, train

SCHEMA_VERSION = 1
RESULTS = Path(__file__).resolve().parent / "results" / "entropy_vs_loss.json"
OPT125M_RHO = 12 / 768  # depth / width of OPT-125M
RHOS = (0.02, 0.03, 0.04, 0.06, 0.08, 0.12, math.inf)
WEIGHTS = ((1.0, 0.0), (1.0, 0.5), (1.0, 1.0), (0.5, 1.0), (0.0, 1.0))  # (a, b)


def reduced_space(seq: int) -> Space:
    """The default space shrunk to what trains on a CPU: bytes, widths 64..256, 2 blocks."""
    return Space(name="entropy-vs-loss", vocab=256, context=seq, head_dim=32,
                 widths=(64, 96, 128, 160, 192, 224, 256), ffn_ratios=(1.0, 2.0, 3.0, 4.0),
                 max_blocks=2, min_depth=0, max_depth=6, sharing=True,
                 order="non-decreasing", positions="learned", tied_head=True)


def flops(card: Card, seq: int) -> int:
    return accounting.flops_per_token(card, seq)


def sample(space: Space, target: float, n: int, seed: int, seq: int) -> list[Card]:
    """n distinct architectures of the space with FLOPs/token within +-10% of target."""
    rng = random.Random(seed)
    seen, cards = set(), []
    for _ in range(200_000):
        blocks = rng.randint(1, space.max_blocks)
        widths = sorted(rng.choice(space.widths) for _ in range(blocks))
        arch = []
        for w in widths:
            depth = rng.choice(space.depths)
            arch.append(Choice(w, rng.choice(space.ffn_ratios), depth,
                               depth > 1 and rng.random() < 0.3))
        arch = tuple(arch)
        if arch in seen:
            continue
        card = space.to_card(arch, f"arch-{len(cards):02d}")
        if abs(flops(card, seq) / target - 1) <= 0.10:
            seen.add(arch)
            cards.append(card)
            if len(cards) == n:
                return cards
    raise SystemExit(f"found only {len(cards)} architectures within +-10% of {target:.3g} FLOPs")


def baseline(space: Space, target: float, seq: int) -> Card:
    """Uniform OPT-style: one block, FFN ratio 4, depth/width closest to OPT-125M's, within
    80..100% of the budget."""
    options = []
    for w in space.widths:
        for d in space.depths:
            card = space.to_card((Choice(w, 4.0, d, False),), "opt-style")
            if 0.8 * target <= flops(card, seq) <= target:
                options.append((abs(math.log(effectiveness(card, "deepmad") / OPT125M_RHO)), card))
    if not options:
        raise SystemExit(f"no uniform OPT-style card within 80..100% of {target:.3g} FLOPs")
    return min(options, key=lambda o: o[0])[1]


def describe(card: Card) -> str:
    return " + ".join(f"{b.width}x{b.depth}{'s' if b.shared else ''} r{b.ffn_ratio:g}"
                      for b in card.blocks)


def row(card: Card, seq: int, result) -> dict:
    return {
        "name": card.name, "arch": describe(card),
        "blocks": [asdict(b) for b in card.blocks],
        "entropy": entropy(card), "rho": effectiveness(card, "deepmad"),
        "params": accounting.params(card), "decoder_params": accounting.decoder_params(card),
        "flops": flops(card, seq), "val_loss": result.val_loss, "val_ppl": result.val_ppl,
        "train_loss": result.train_loss, "seconds": result.seconds,
        "tokens_per_s": result.tokens_per_s,
    }


def correlations(rows: list[dict], key: str) -> dict:
    x = [r[key] for r in rows]
    y = [r["val_loss"] for r in rows]
    if len(rows) < 3 or len(set(x)) < 2:
        return {"kendall_tau": None, "kendall_p": None, "spearman": None, "spearman_p": None}
    tau = stats.kendalltau(x, y)
    rho = stats.spearmanr(x, y)
    return {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
            "spearman": float(rho.statistic), "spearman_p": float(rho.pvalue)}


def rescore(rows: list[dict], cards: list[Card]) -> list[dict]:
    """Kendall tau (score vs val loss; negative is good) and the pick's regret per setting."""
    best = min(r["val_loss"] for r in rows)
    out = []
    for rho0 in RHOS:
        for a, b in WEIGHTS:
            s = EntropySettings(a=a, b=b, rho=rho0, objective="deepmad",
                                effectiveness="deepmad")
            # beyond rho_0 an architecture is not effective: rank it below all effective ones
            scores = [entropy(c, s) - (1e6 if effectiveness(c, "deepmad") > rho0 else 0)
                      for c in cards]
            losses = [r["val_loss"] for r in rows]
            tau = (float(stats.kendalltau(scores, losses).statistic)
                   if len(rows) >= 3 and len(set(scores)) > 1 else None)
            pick = max(range(len(rows)), key=lambda i: scores[i])
            out.append({"rho0": None if math.isinf(rho0) else rho0, "a": a, "b": b,
                        "kendall_tau": tau, "pick": rows[pick]["name"],
                        "pick_regret": rows[pick]["val_loss"] - best,
                        "effective": sum(effectiveness(c, "deepmad") <= rho0
                                         for c in cards)})
    return out


def plot(rows: list[dict], comparison: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ok = [r for r in rows if r["rho"] <= DEFAULT_RHO]
    bad = [r for r in rows if r["rho"] > DEFAULT_RHO]
    ax.scatter([r["entropy"] for r in ok], [r["val_loss"] for r in ok], label=f"sampled, "
               f"rho <= {DEFAULT_RHO}", color="tab:blue")
    ax.scatter([r["entropy"] for r in bad], [r["val_loss"] for r in bad], label=f"sampled, "
               f"rho > {DEFAULT_RHO}", color="tab:gray", marker="x")
    for key, color in (("mp_optimal", "tab:red"), ("baseline", "tab:green")):
        r = comparison[key]
        ax.scatter([r["entropy"]], [r["val_loss"]], color=color, marker="*", s=160,
                   label=f"{key.replace('_', '-')}: {r['arch']}")
    ax.set_xlabel("entropy (a = b = 1)")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", type=int, default=24, help="sampled architectures (default 24)")
    ap.add_argument("--tokens", type=int, default=400_000, help="training tokens per model")
    ap.add_argument("--flops", type=float, default=1.5e6, help="FLOPs/token budget at --seq")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--corpus", default="prose", help="built-in corpus name or a path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a "
                    "shared, loaded machine OpenMP's spinning threads ran 10x slower than one)")
    ap.add_argument("--reduced", action="store_true", help="CI smoke test: 2 archs, 512 tokens")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.reduced:
        args.archs, args.tokens, args.seq, args.batch = 2, 256, 32, 4
    torch.set_num_threads(args.threads)
    mode = "reduced" if args.reduced else "run"
    t_start = time.perf_counter()
    space = reduced_space(args.seq)
    data = load_split(args.corpus, Tokenizer())
    config = TrainConfig(tokens=args.tokens, seq=args.seq, batch=args.batch, lr=args.lr,
                         eval_tokens=4 * args.seq if args.reduced else 65_536, seed=args.seed,
                         checkpoint_every=10**9)
    cards = sample(space, args.flops, args.archs, args.seed, args.seq)
    design = solve(Problem(space, Budgets(flops=args.flops), DEEPMAD, args.seq),
                   "exact")
    extra = {"mp_optimal": space.to_card(design.arch, "mp-optimal"),
             "baseline": baseline(space, args.flops, args.seq)}

    def fit(card: Card) -> dict:
        result = train(card, data, config)
        r = row(card, args.seq, result)
        print(f"{card.name:>12}  {r['arch']:<28} H {r['entropy']:6.1f}  rho {r['rho']:.3f}  "
              f"dec.params {r['decoder_params']:>8,}  FLOPs {r['flops']:>9,}  "
              f"val {r['val_loss']:.4f}  ({r['seconds']:.0f} s, {r['tokens_per_s']:,.0f} tok/s)",
              flush=True)
        return r

    rows = [fit(c) for c in cards]
    comparison = {k: fit(c) for k, c in extra.items()}
    result = {
        "schema_version": SCHEMA_VERSION, "mode": mode,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None
                                                        else sys.argv[1:])),
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "space": {k: v for k, v in asdict(space).items() if k != "source"},
        "budget_flops": args.flops, "corpus": data.to_json(),
        "train": asdict(config), "seconds": None,
        "architectures": rows,
        "correlations": {"entropy": correlations(rows, "entropy"),
                         "decoder_params": correlations(rows, "decoder_params"),
                         "params": correlations(rows, "params"),
                         "flops": correlations(rows, "flops")},
        "comparison": comparison | {"mp_minus_baseline": comparison["mp_optimal"]["val_loss"]
                                    - comparison["baseline"]["val_loss"],
                                    "solver": asdict(design.solver)},
        "sweep": rescore(rows, cards),
    }
    result["seconds"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    plot(rows, comparison, args.out.with_suffix(".png"),
         f"{len(rows)} archs at {args.flops:.3g} FLOPs/token, {args.tokens:,} tokens each")
    print_summary(result)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} ({result['seconds']:.0f} s)")
    return 0


def print_summary(result: dict) -> None:
    print("\nrank correlation with validation loss (negative = the proxy predicts lower loss)")
    print(f"{'proxy':<16}{'Kendall tau':>12}{'Spearman':>10}")
    for key, c in result["correlations"].items():
        tau = "-" if c["kendall_tau"] is None else f"{c['kendall_tau']:+.3f}"
        sp = "-" if c["spearman"] is None else f"{c['spearman']:+.3f}"
        print(f"{key:<16}{tau:>12}{sp:>10}")
    comp = result["comparison"]
    for key in ("mp_optimal", "baseline"):
        r = comp[key]
        print(f"{key:<12} {r['arch']:<28} val loss {r['val_loss']:.4f}  "
              f"dec.params {r['decoder_params']:,}")
    print(f"MP-optimal minus baseline: {comp['mp_minus_baseline']:+.4f} nats")
    scored = [s for s in result["sweep"] if s["kendall_tau"] is not None]
    if scored:
        best = min(scored, key=lambda s: (s["kendall_tau"], s["pick_regret"]))
        print(f"best re-scored setting: rho0 {best['rho0']}, a {best['a']}, b {best['b']}: "
              f"tau {best['kendall_tau']:+.3f}, pick regret {best['pick_regret']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
