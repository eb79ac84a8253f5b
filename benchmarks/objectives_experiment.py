"""Which objective picks architectures that train best? (issue 17, item 3's new experiment)

Samples architectures of one FLOPs budget (+-10%) from the default space shrunk to what trains
on a CPU: the same grid of widths (128..384), FFN ratios, sharing, non-decreasing block widths and
the same embedding rule (the token embedding and tied head take the first block's width), with a
BPE vocabulary trained offline on the corpus instead of OPT's 50k. Each is trained on the same
tokens; then every objective (`deepmad`, `merino`, `params`) and effectiveness variant is
rank-correlated with validation loss (Kendall tau, Spearman, bootstrap 95% intervals), as
rescore_objectives.py does for the earlier, byte-level set.

It also trains the MP-optimal design (exact solver, the same FLOPs budget as an upper bound) of
each objective, the paper's ablation (MeRino's entropy without effectiveness and weighting, and
with both), the default objective's design with a fixed 256-wide embedding instead of the
first block's (the embedding rule), and the uniform OPT-style baseline scaled to the budget, on
the same tokens.

Training runs in worker processes (--workers, one torch thread each: on this 2-core host two
one-thread trainings finish more tokens per second than one two-thread training). Every run keeps
checkpoints and its result in the workspace, so an interrupted experiment resumes where it
stopped: rerun the same command.

    python benchmarks/objectives_experiment.py             # 16 sampled + 6 designs, 2M tokens each
    python benchmarks/objectives_experiment.py --reduced   # the CI smoke test
    python benchmarks/objectives_experiment.py --device cuda --tokens 20000000   # on a GPU

Writes benchmarks/results/objectives_experiment.json and a scatter plot PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from entropy_vs_loss import baseline, describe, flops, sample  # noqa: E402
from rescore_objectives import constrained, correlate, scores  # noqa: E402

from merino_mobile import accounting  # noqa: E402
from merino_mobile.card import Card  # noqa: E402
from merino_mobile.corpus import load_split, train_bpe  # noqa: E402
from merino_mobile.design import Budgets, Problem, solve  # noqa: E402
from merino_mobile.entropy import EntropySettings, effectiveness_all, objectives  # noqa: E402
from merino_mobile.errors import UserError  # noqa: E402
from merino_mobile.files import atomic_write_text, utc_now, write_json  # noqa: E402
from merino_mobile.space import Space  # noqa: E402
from merino_mobile.tokenizer import Tokenizer  # noqa: E402
from merino_mobile.toolchain import package_versions  # noqa: E402
from merino_mobile.train import TrainConfig, train, train_device  # noqa: E402

SCHEMA_VERSION = 1
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "objectives_experiment.json"
WORKSPACE = ROOT / "build" / "objectives_experiment"
NO_BOUND = 1e6  # rho_0 so large that no architecture of the space is held back by it
# the MeRino-effectiveness bound of the ablation's "with" design: GPT-2's and OPT-125M's rho
# (12 layers of 768: 12 / (16 log2 768) = 0.078), rounded up
MERINO_RHO = 0.08
# alpha_2 / alpha_1 at which layers add entropy, so the design fills its budget
MERINO_FFN_WEIGHT = 4.0

# the fixed embedding width of the embedding-rule comparison (projections in and out of it)
EMBED = 256
# name -> (settings, embedding width (None: the first block's), what it stands for); each is
# solved exactly under the FLOPs budget
DEEPMAD = EntropySettings(objective="deepmad", effectiveness="deepmad")  # rho_0 0.03
DESIGNS: dict[str, tuple[EntropySettings, int | None, str]] = {
    "mp-deepmad": (DEEPMAD, None, "deepmad, rho_0 0.03 (the default before this experiment)"),
    "mp-merino": (EntropySettings(objective="merino", a=1.0, b=1.0, rho=NO_BOUND), None,
                  "merino a = b = 1, no effectiveness bound (the paper's ablation: without)"),
    "mp-merino-eff": (EntropySettings(objective="merino", b=MERINO_FFN_WEIGHT,
                                      effectiveness="merino", rho=MERINO_RHO), None,
                      f"merino a = 1, b = {MERINO_FFN_WEIGHT:g}, merino rho <= {MERINO_RHO} "
                      "(the paper's ablation: with both; the default since)"),
    "mp-params": (EntropySettings(objective="params", rho=NO_BOUND), None,
                  "params (decoder parameters), no effectiveness bound"),
    f"mp-deepmad-e{EMBED}": (DEEPMAD, EMBED,
                             f"deepmad, rho_0 0.03, a fixed {EMBED}-wide embedding"),
}


def experiment_space(vocab: int, seq: int) -> Space:
    """The default space (search/default.toml) at CPU scale: its width grid up to 384, its FFN
    ratios, sharing, order and embedding rule; 3 blocks of 0..8 layers; a BPE vocabulary."""
    return Space(name="objectives-experiment", vocab=vocab, context=seq, head_dim=64,
                 widths=(128, 192, 256, 320, 384), ffn_ratios=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0),
                 max_blocks=3, min_depth=0, max_depth=8, sharing=True, order="non-decreasing",
                 positions="learned", tied_head=True)


def designs(space: Space, budget: float, seq: int) -> dict[str, Card]:
    """The MP-optimal card of every DESIGNS entry, and the OPT-style baseline."""
    out = {}
    for name, (s, embed, _) in DESIGNS.items():
        sp = space if embed is None else replace(space, embed_width=embed)
        out[name] = sp.to_card(solve(Problem(sp, Budgets(flops=budget), s, seq), "exact").arch,
                               name)
    out["baseline"] = replace(baseline(space, budget, seq), name="baseline")
    return out


# --- the workers ----------------------------------------------------------------------------

_DATA: Any = None


def _init_worker(corpus: str, tokenizer: str, threads: int) -> None:
    import torch

    global _DATA
    torch.set_num_threads(threads)
    _DATA = load_split(corpus, Tokenizer(tokenizer))


def _fit(card: Card, config: TrainConfig, run_dir: str, device: str) -> dict[str, Any]:
    """Train one card (resuming from run_dir's checkpoint) and store its result there."""
    out = Path(run_dir)
    every = max(1, config.steps // 10)
    t0 = time.perf_counter()

    def progress(done: int, steps: int, loss: float, rate: float) -> None:
        if done % every == 0 or done == steps:
            print(f"  {card.name:>10}  step {done:>5}/{steps}  loss {loss:.3f}  "
                  f"{rate:,.0f} tok/s  ({time.perf_counter() - t0:.0f} s)", flush=True)

    r = train(card, _DATA, config, out=out, progress=progress, device=device)
    row = {"name": card.name, "arch": describe(card), "card": card.to_json(),
           "params": accounting.params(card), "decoder_params": accounting.decoder_params(card),
           "flops": flops(card, config.seq), "val_loss": r.val_loss, "val_ppl": r.val_ppl,
           "train_loss": r.train_loss, "seconds": r.seconds, "tokens_per_s": r.tokens_per_s,
           "start_step": r.start_step, "steps": r.steps}
    atomic_write_text(out / "result.json", json.dumps(row, indent=2) + "\n")
    return row


# --- the experiment -------------------------------------------------------------------------

def check_workspace(ws: Path, setup: dict[str, Any]) -> None:
    """A workspace holds one experiment: refuse to mix runs of another setup into it."""
    path = ws / "experiment.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != setup:
            diff = sorted(k for k in set(old) | set(setup) if old.get(k) != setup.get(k))
            print(f"error: workspace {ws} holds an experiment with other settings "
                  f"({', '.join(diff)}); rerun with its flags or give another --workspace",
                  file=sys.stderr)
            raise SystemExit(2)
    else:
        write_json(path, setup)


def run_all(cards: list[Card], config: TrainConfig, ws: Path, corpus: str, tokenizer: Path,
            workers: int, threads: int, device: str = "cpu") -> dict[str, dict[str, Any]]:
    """Every card's result: read from the workspace when finished, trained otherwise."""
    done: dict[str, dict[str, Any]] = {}
    todo, twins = [], {}
    first: dict[tuple, str] = {}
    for c in cards:
        key = (c.blocks, c.embed_width)
        if key in first:  # a design that is also a sampled architecture is trained once
            twins[c.name] = first[key]
            continue
        first[key] = c.name
        result = ws / "runs" / c.name / "result.json"
        if result.exists():
            done[c.name] = json.loads(result.read_text())
        else:
            todo.append(c)
    print(f"{len(done)} of {len(first)} runs finished in {ws}; training {len(todo)} "
          f"({workers} workers x {threads} thread)", flush=True)
    if todo:
        train_all(todo, config, ws, corpus, tokenizer, workers, threads, device, done,
                  len(first))
    return done | {name: done[twin] | {"name": name, "same_as": twin}
                   for name, twin in twins.items()}


def train_all(todo: list[Card], config: TrainConfig, ws: Path, corpus: str, tokenizer: Path,
              workers: int, threads: int, device: str, done: dict[str, dict[str, Any]],
              total: int) -> None:
    """Train the cards in worker processes, adding each result to `done` as it finishes."""
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(corpus, str(tokenizer), threads)) as pool:
        jobs = {pool.submit(_fit, c, config, str(ws / "runs" / c.name), device): c
                for c in todo}
        for job in as_completed(jobs):
            r = job.result()
            done[r["name"]] = r
            print(f"{r['name']:>12}  {r['arch']:<30} dec.params {r['decoder_params']:>9,}  "
                  f"FLOPs {r['flops']:>10,}  val {r['val_loss']:.4f}  "
                  f"({r['seconds']:.0f} s, {r['tokens_per_s']:,.0f} tok/s)  "
                  f"[{len(done)}/{total}]", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", type=int, default=16, help="sampled architectures (default 16)")
    ap.add_argument("--tokens", type=int, default=2_000_000, help="training tokens per model")
    ap.add_argument("--flops", type=float, default=4e6, help="FLOPs/token budget at --seq")
    ap.add_argument("--vocab", type=int, default=2048, help="BPE vocabulary (default 2048)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--corpus", default="stdlib", help="built-in corpus name or a path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="where the models train: cpu (default) "
                    "or cuda; a GPU run writes its own results and workspace (-cuda), apart "
                    "from the CPU ones")
    ap.add_argument("--workers", type=int, default=None,
                    help="training processes (default: 2 on cpu, 1 on cuda)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (2000)")
    ap.add_argument("--workspace", type=Path, default=None,
                    help="checkpoints and finished runs (default build/objectives_experiment, "
                    "-cuda for --device cuda)")
    ap.add_argument("--reduced", action="store_true",
                    help="CI smoke test: 3 archs, 512 tokens, vocab 320 on the prose corpus")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default benchmarks/results/objectives_experiment.json, "
                    "-cuda for --device cuda)")
    args = ap.parse_args(argv)
    suffix = "" if args.device == "cpu" else "-" + args.device.split(":")[0]
    args.workspace = args.workspace or WORKSPACE.with_name(WORKSPACE.name + suffix)
    args.out = args.out or RESULTS.with_name(f"{RESULTS.stem}{suffix}.json")
    if args.workers is None:
        args.workers = 1 if args.device != "cpu" else min(2, os.cpu_count() or 1)
    try:
        train_device(args.device)
    except UserError as e:
        ap.error(str(e))
    if args.reduced:
        args.archs, args.tokens, args.seq, args.batch = 3, 512, 32, 4
        args.vocab, args.corpus, args.bootstrap, args.flops = 320, "prose", 50, 1.5e6
    for name in ("archs", "tokens", "vocab", "workers", "threads", "bootstrap"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    t_start = time.perf_counter()
    ws = args.workspace
    config = TrainConfig(tokens=args.tokens, seq=args.seq, batch=args.batch, lr=args.lr,
                         eval_tokens=4 * args.seq if args.reduced else 65_536, seed=args.seed,
                         checkpoint_every=200)
    setup = {"schema_version": SCHEMA_VERSION, "archs": args.archs, "flops": args.flops,
             "vocab": args.vocab, "corpus": args.corpus, "seed": args.seed,
             "train": asdict(config)}
    if args.device != "cpu":  # a CPU run's setup stays as it always was
        setup["device"] = args.device
    check_workspace(ws, setup)
    tok_path = ws / "tokenizer.json"
    if not tok_path.exists():
        print(f"training a {args.vocab}-id BPE on {args.corpus}'s training split", flush=True)
        train_bpe(args.corpus, args.vocab, tok_path)
    space = experiment_space(args.vocab, args.seq)
    sampled = sample(space, args.flops, args.archs, args.seed, args.seq)
    extra = designs(space, args.flops, args.seq)
    cards = sampled + list(extra.values())
    results = run_all(cards, config, ws, args.corpus, tok_path, args.workers, args.threads,
                      args.device)

    rows = [results[c.name] for c in sampled]
    losses = [r["val_loss"] for r in rows]
    rng = np.random.default_rng(args.seed)
    values = scores(sampled)
    for i, c in enumerate(sampled):
        rows[i] |= {"objectives": objectives(c), "rho": effectiveness_all(c)}
    comparison = {}
    base = results["baseline"]["val_loss"]
    for name, card in extra.items():
        r = results[name] | {"objectives": objectives(card), "rho": effectiveness_all(card),
                             "minus_baseline": results[name]["val_loss"] - base}
        r["settings"] = asdict(DESIGNS[name][0]) if name in DESIGNS else None
        r["embed_width"] = card.embedding_width
        r["stands_for"] = DESIGNS[name][2] if name in DESIGNS else "uniform OPT-style baseline"
        comparison[name] = r
    out = {
        "schema_version": SCHEMA_VERSION, "mode": "reduced" if args.reduced else "run",
        "date": utc_now(),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None
                                                        else sys.argv[1:])),
        "versions": package_versions(("torch", "numpy", "scipy", "tokenizers")),
        "space": {k: v for k, v in asdict(space).items() if k != "source"},
        "budget_flops": args.flops, "corpus": args.corpus, "vocab": args.vocab,
        "train": asdict(config), "device": args.device, "workers": args.workers,
        "threads": args.threads,
        "bootstrap": {"resamples": args.bootstrap, "seed": args.seed, "interval": "percentile"},
        "architectures": rows,
        "proxies": {k: correlate(v, losses, rng, args.bootstrap) for k, v in values.items()},
        "constrained": constrained(sampled, losses, values, rng, args.bootstrap),
        "comparison": comparison,
        "best_sampled": min(rows, key=lambda r: r["val_loss"])["name"],
        "seconds": time.perf_counter() - t_start,
    }
    write_json(args.out, out)
    plot(out, args.out.with_suffix(".png"))
    print_summary(out)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} ({out['seconds']:.0f} s)")
    return 0


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    colors = {"mp-deepmad": "tab:red", "mp-merino": "tab:purple", "mp-merino-eff": "tab:orange",
              "mp-params": "tab:brown", f"mp-deepmad-e{EMBED}": "tab:pink",
              "baseline": "tab:green"}
    for ax, name in zip(axes, ("deepmad", "merino", "params"), strict=True):
        rows = out["architectures"]
        ax.scatter([r["objectives"][name] for r in rows], [r["val_loss"] for r in rows],
                   color="tab:blue", label="sampled")
        for key, r in out["comparison"].items():
            ax.scatter([r["objectives"][name]], [r["val_loss"]], color=colors[key], marker="*",
                       s=150, label=f"{key}: {r['arch']}")
        tau = out["proxies"][name]["kendall_tau"]
        ax.set_title(f"{name}: Kendall tau {tau:+.2f} (sampled)", fontsize=9)
        ax.set_xlabel(f"{name} objective")
        ax.set_ylabel("validation loss (nats/token)")
    axes[0].legend(fontsize=6)
    fig.suptitle(f"{len(out['architectures'])} architectures at {out['budget_flops']:.3g} "
                 f"FLOPs/token, {out['train']['tokens']:,} tokens each, BPE {out['vocab']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(out: dict[str, Any]) -> None:
    def ci(v: list[float] | None) -> str:
        return "-" if v is None else f"[{v[0]:+.2f}, {v[1]:+.2f}]"

    n = len(out["architectures"])
    print(f"\n{n} sampled architectures; rank correlation with validation loss "
          "(negative = more of it, lower loss)")
    print(f"{'proxy':<24}{'Kendall tau':>12}{'95% CI':>18}{'Spearman':>10}{'95% CI':>18}")
    for key, c in out["proxies"].items():
        tau = c["kendall_tau"]
        sp = c["spearman"]
        print(f"{key:<24}{tau:>+12.3f}{ci(c['kendall_ci95']):>18}"
              f"{sp:>+10.3f}{ci(c['spearman_ci95']):>18}")
    print(f"\n{'design':<15}{'architecture':<34}{'dec.params':>11}{'FLOPs':>11}{'val loss':>10}"
          f"{'- baseline':>11}")
    for name, r in out["comparison"].items():
        print(f"{name:<15}{r['arch']:<34}{r['decoder_params']:>11,}{r['flops']:>11,}"
              f"{r['val_loss']:>10.4f}{r['minus_baseline']:>+11.4f}")
    best = min(out["architectures"], key=lambda r: r["val_loss"])
    print(f"best sampled: {best['name']} {best['arch']} val loss {best['val_loss']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
