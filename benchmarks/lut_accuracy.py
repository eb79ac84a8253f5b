"""How well the host's latency table predicts whole models: share within +-10%, MAPE.

    python benchmarks/lut_accuracy.py [--n 30] [--context 256] [--quant int8] [--workspace DIR]

1. Profiles the default search space's quick grid on the `host` device (ExecuTorch, --quant;
   decode contexts 128 and 512, so --context 256 is between them, as for a user of `profile`
   then `design`) in a fresh workspace (or --workspace, which resumes and reuses its exports),
   timing the whole profile.
2. Draws --n random architectures of the default space (seeded), builds each decoder with a KV
   cache of --context positions and exports it with the project's exporter (`export_executorch`),
   several side by side (`merino_mobile.parallel`), after the profile and timed apart from it.
3. Measures one decode step of each at that context on the same host device, the same way:
   --rounds rounds (default 5) in which every model is timed in turn, --seconds (1.5) per model
   in all; the measurement is the median of the rounds' medians. Compares it with
   `predict_latency(card, lut, context)`, and the even rounds' median with the odd rounds' (the
   share within +-10% there is the best any table could score against these measurements);
   prints a table and writes benchmarks/results/lut_accuracy.json, with each prediction's terms.
   `--measured FILE` takes the measurements from an earlier result instead (same cards), to
   score a new table against them.
4. Times the profile's sentinel point once per round beside the models: `level` is its median
   now over the profile's, and the `*_at_level` scores take that change of pace out. Each row
   keeps the streaming and hot terms, the working set and the cold fraction of the prediction
   (`merino_mobile.latency.predict_latency`), and the streaming-only prediction.

5. Calibration, scored on models it never saw (issue 16, item 5). The profile benches --anchors
   whole models (default 4, `profile --anchors`) interleaved with its points; the calibration
   fitted on those anchors alone predicts every drawn model held out by construction
   (`anchors`); a --folds cross-validation (default 5) fits on the anchors plus the other folds'
   drawn models and predicts each fold (`cv`). Each is scored as the raw table is: share within
   +-10%, MAPE, bias, and Kendall's tau of predicted with measured latency, beside the models' own
   even-against-odd rounds agreement (`repeat_within_10pct`: the ceiling this machine allows).
   `streaming_vs_slow` scores the streaming prediction (the solver's) against each model's slow
   speed where its rounds ran at two (`base.two_speeds`, docs/measurements.md "Two speeds";
   each row's `speeds`, `slow_ms`, `fast_ms`, `fast_share`), `raw_vs_slow` the raw prediction.
   The calibration fits slow speeds (`Measurement.slow_ms`: what `design --verify` judges a
   budget by), so `anchors` and `cv` are scored against them too, beside the halves' agreement
   at the slow speed (`repeat_slow_within_10pct`: each half's own slow speed).

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
from dataclasses import replace
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


def term_breakdown(card, lut, context: int, hot: bool = False) -> dict[str, float]:
    """The prediction's terms (ms) as `merino_mobile.latency.predict_latency` sums them before
    it blends streaming and (`hot`) cache-resident timings."""
    from merino_mobile.accounting import transitions

    return {
        "fixed": lut.fixed("decode"),
        "embedding": lut.embedding(card.embedding_width, card.vocab, "decode", context),
        "layers": sum(b.depth * lut.layer(b.width, b.ffn_ratio, b.heads, context, "decode",
                                          hot=hot) for b in card.blocks),
        "projections": sum(lut.projection(a, b, "decode", context, hot=hot)
                           for a, b in transitions(card)),
        "head": lut.head(card.embedding_width, card.vocab, "decode", hot=hot),
    }


def scores(pred: list[float], measured: list[float]) -> dict[str, float | None]:
    """within +-10%, MAPE, bias (mean signed %), and Kendall's tau of `pred` with `measured`."""
    from scipy.stats import kendalltau

    if not measured:
        return {"within_10pct": None, "mape_pct": None, "bias_pct": None, "kendall_tau": None}
    errs = [100 * (p - m) / m for p, m in zip(pred, measured, strict=True)]
    tau = kendalltau(pred, measured).statistic if len(measured) >= 2 else None
    return {"within_10pct": sum(abs(e) <= 10 for e in errs) / len(errs),
            "mape_pct": statistics.fmean(abs(e) for e in errs),
            "bias_pct": statistics.fmean(errs),
            "kendall_tau": None if tau is None else float(tau)}


def as_measurement(card, lut, context: int, measured_ms: float, i: int):
    """A drawn model's measurement in the store's shape, for `calibration.fit` (which reads the
    fingerprint, runtime, quantization, card, context and the decode median at the slow speed:
    `measured_ms`, one round, is taken as it is)."""
    from merino_mobile.latency.store import Measurement

    return Measurement(
        device="host", fingerprint=lut.fingerprint.key, runtime=lut.runtime, quant=lut.quant,
        card_name=card.name, card=card.to_json(), prompt=0, generate=1, context=context,
        cache_len=context, threads=lut.fingerprint.threads, rounds=1,
        decode_samples_ms=(measured_ms,), ttft_samples_ms=(), decode_median_ms=measured_ms,
        ttft_median_ms=0.0, artifact="", artifact_sha256="", tag="lut_accuracy", id=-1 - i)


def calibrated_predictions(ws, lut, cards, measured: dict[str, float], context: int,
                           folds: int) -> dict[str, object]:
    """Held-out calibrated predictions of the drawn models: fitted on the profile's anchors only
    (`anchors`), and cross-validated over `folds` folds with the other folds' models added
    (`cv`); each with the calibration's record(s)."""
    from merino_mobile.latency import predict_latency
    from merino_mobile.latency.anchors import TAG
    from merino_mobile.latency.calibration import CalibratedTable, fit
    from merino_mobile.latency.store import read_measurements

    anchors = [m for m in read_measurements(ws.state, fingerprint=lut.fingerprint.key,
                                            runtime=lut.runtime, quant=lut.quant)
               if m.tag == TAG]
    cal = fit(lut, anchors, device="host")
    # (a reason given to CalibratedTable means "not applied": pass one only when it is not)
    table = CalibratedTable(lut, cal, reason="" if cal.applied else cal.reason)
    out: dict[str, object] = {
        "anchor_models": cal.models, "anchor_calibration": {
            "applied": cal.applied, "reason": cal.reason, "factors": cal.factors,
            "fitted": cal.fitted, "loo_mape_pct": cal.loo_mape_pct},
        "anchors": {c.name: predict_latency(c, table, context, cache_aware=False)
                    for c in cards}}
    ok = [c for c in cards if c.name in measured]
    cv: dict[str, float] = {}
    applied = 0
    for f in range(folds):
        held = ok[f::folds]
        rest = [as_measurement(c, lut, context, measured[c.name], i)
                for i, c in enumerate(ok) if c not in held]
        cf = fit(lut, anchors + rest, device="host")
        applied += cf.applied
        tf = CalibratedTable(lut, cf, reason="" if cf.applied else cf.reason)
        cv.update({c.name: predict_latency(c, tf, context, cache_aware=False) for c in held})
    out["cv"], out["cv_folds_applied"] = cv, applied
    return out


def measure_all(ws, cards, build: Path, args, grid
                ) -> tuple[dict[str, list[float]], dict[str, str], list[float]]:
    """Each model's median per round (ms), the errors of models that failed, and the profile's
    sentinel point timed once per round beside them (ms, as the profile times it)."""
    from merino_mobile.device import open_device
    from merino_mobile.device.base import InputSpec, MethodSpec
    from merino_mobile.device.profiles import load_profile
    from merino_mobile.latency.programs import batches, export_batch

    device = open_device(load_profile(ws, "host"))
    sentinel = grid.sentinel()
    batch = next(b for b in batches(grid.points(), grid, args.quant, True) if sentinel in b)
    program, specs = export_batch(batch, grid, "executorch", args.quant, ws.state / "cache", True)
    sentinel_req = device.profile.measure.request("executorch", (specs[batch.index(sentinel)],))
    sentinel_handle = device.prepare(program)
    sentinel_ms: list[float] = []
    # one decode step: a token at position context-1, attending the whole cache
    spec = MethodSpec("forward", (InputSpec((1, 1), "int64", 7),
                                  InputSpec((1,), "int64", args.context - 1)))
    req = replace(device.profile.measure.request("executorch", (spec,)),
                  min_seconds=args.seconds / args.rounds, max_repeats=10**6,
                  max_seconds=max(2.0, 2 * args.seconds / args.rounds))
    # Rounds: every model once per round, in turn, so load on this shared machine that comes
    # and goes over minutes falls on all models alike rather than on a few.
    rounds: dict[str, list[float]] = {c.name: [] for c in cards}
    errors: dict[str, str] = {}
    handles = {c.name: device.prepare(card_path(build, c, args.context, args.quant))
               for c in cards}
    for r in range(args.rounds):
        for card in cards:
            if card.name in errors:
                continue
            res = device.benchmark(handles[card.name], req)["forward"]
            if res.ok:
                rounds[card.name].append(res.median)
            else:
                errors[card.name] = res.error or "failed"
        res = next(iter(device.benchmark(sentinel_handle, sentinel_req).results))
        if res.ok:
            sentinel_ms.append(res.median)
        print(f"  round {r + 1}/{args.rounds} measured (sentinel "
              f"{res.median if res.ok else float('nan'):.3f} ms)", flush=True)
    device.cleanup()
    return rounds, errors, sentinel_ms


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
    ap.add_argument("--rounds", type=int, default=5,
                    help="Measure every model once per round, in turn (default 5)")
    ap.add_argument("--seconds", type=float, default=1.5,
                    help="Timing per model, split over the rounds (default 1.5)")
    ap.add_argument("--measured", type=Path, default=None,
                    help="Take the whole models' measurements from this earlier result (its "
                         "cards must be the ones drawn here) instead of measuring")
    ap.add_argument("--stored", action="store_true",
                    help="Do not profile: build the table from the measurements already stored "
                         "in the workspace (decode terms suffice here).")
    ap.add_argument("--anchors", type=int, default=4,
                    help="Whole models the profile benches for its calibration (default 4)")
    ap.add_argument("--folds", type=int, default=5,
                    help="Folds of the calibration's cross-validation over the drawn models")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                    "lut_accuracy.json")
    args = ap.parse_args()

    from merino_mobile import accounting
    from merino_mobile.device.base import two_speeds
    from merino_mobile.device.profiles import load_profile
    from merino_mobile.latency.grid import describe_grid, make_grid
    from merino_mobile.latency.predict import cold_fraction, predict_latency
    from merino_mobile.latency.profile import run_profile
    from merino_mobile.latency.store import Store
    from merino_mobile.parallel import Job, run_jobs
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
        from merino_mobile.latency.table import Lut

        fp = HostDevice(load_profile(ws, "host")).fingerprint("executorch", args.quant)
        store = Store.open(ws.state)
        rows_ = store.rows(fp.key, "executorch", args.quant)
        store.close()
        lut = Lut.from_rows(rows_, fp, "executorch", args.quant,
                            load_profile(ws, "host").cache_bytes())  # as `profile` does
        profile_s, export_s, reused = None, None, sum(r.ok for r in rows_)
        print(f"table from {reused} stored points", flush=True)
    else:
        t0 = time.perf_counter()
        report = run_profile(ws, "host", "executorch", args.quant, grid, progress=progress,
                             anchors=args.anchors, space=space_path)
        profile_s, export_s, reused = time.perf_counter() - t0, report.export_s, report.skipped
        print(f"profiled in {profile_s:.0f} s (export {report.export_s:.0f} s), "
              f"{report.measured} measured, {report.skipped} reused, {len(report.failed)} "
              f"failed", flush=True)
        from merino_mobile.latency.table import read_lut

        lut = read_lut(Path(report.lut))

    # the level of the machine while the table was measured: the profile's good sentinel readings
    store = Store.open(ws.state)
    profile_sentinel = [ms for ms, _, good in store.sentinels(lut.fingerprint.key, "executorch",
                                                              args.quant) if good]
    store.close()

    if args.measured:
        earlier = json.loads(args.measured.read_text())
        by_card = {json.dumps(r["card"], sort_keys=True): r for r in earlier["rows"]}
        rounds, errors, export_secs = {}, {}, {}
        sentinel_ms = earlier.get("sentinel_round_ms", [])
        for c in cards:
            r = by_card.get(json.dumps(c.to_json(), sort_keys=True))
            if r is None or "round_ms" not in r:
                sys.exit(f"{args.measured} has no round measurements of {c.name}; measure again "
                         f"(without --measured)")
            rounds[c.name] = r["round_ms"]
            if r.get("error"):
                errors[c.name] = r["error"]
            export_secs[c.name] = r.get("export_s", 0.0)
        models_export_wall = earlier.get("models_export_wall_s")
    else:
        export_secs, models_export_wall = export_all()
        rounds, errors, sentinel_ms = measure_all(ws, cards, build, args, grid)
    rows = []
    for card in cards:
        predicted = predict_latency(card, lut, args.context)
        working_set = accounting.decode_working_set(card, args.context, args.quant)
        meds = rounds[card.name]
        ok = card.name not in errors and bool(meds)
        measured = statistics.median(meds) if ok else None
        row = {"card": card.to_json(), "params": accounting.params(card), "depth": card.depth,
               "widths": [b.width for b in card.blocks], "predicted_ms": predicted,
               "terms_ms": term_breakdown(card, lut, args.context),
               "hot_terms_ms": term_breakdown(card, lut, args.context, hot=True),
               "streaming_ms": predict_latency(card, lut, args.context, cache_aware=False),
               "working_set_bytes": working_set,
               "cold_fraction": cold_fraction(working_set, lut.cache_bytes),
               "measured_ms": measured, "round_ms": meds,
               "error": errors.get(card.name), "export_s": export_secs.get(card.name, 0.0)}
        if ok:
            # the rounds at two speeds (docs/measurements.md, "Two speeds"): the slow one's
            # median, against the streaming prediction the solver designs with
            row |= two_speeds(meds)
            row["error_pct"] = 100 * (predicted - measured) / measured
            # the noise floor: the even rounds against the odd ones, same models, same run
            if len(meds) >= 2:
                a, b = statistics.median(meds[0::2]), statistics.median(meds[1::2])
                row["repeat_pct"] = 100 * (a - b) / b
                a, b = two_speeds(meds[0::2])["slow_ms"], two_speeds(meds[1::2])["slow_ms"]
                row["repeat_slow_pct"] = 100 * (a - b) / b
        rows.append(row)
        print(f"{card.name:7s} widths {row['widths']!s:28s} depth {card.depth:2d} "
              f"params {row['params'] / 1e6:6.1f}M  measured "
              f"{row['measured_ms'] or float('nan'):8.2f} ms  predicted {predicted:8.2f} ms  "
              f"{row.get('error_pct', float('nan')):+6.1f}%", flush=True)
    good = [r for r in rows if "error_pct" in r]
    errs = [abs(r["error_pct"]) for r in good]
    # the calibration fits each model's slow speed, as it fits the store's measurements
    measured_by = {c.name: r["slow_ms"] for c, r in zip(cards, rows, strict=True)
                   if "error_pct" in r}
    cal = calibrated_predictions(ws, lut, cards, measured_by, args.context, args.folds)
    for c, r in zip(cards, rows, strict=True):
        r["calibrated_anchors_ms"] = cal["anchors"][c.name]
        r["calibrated_cv_ms"] = cal["cv"].get(c.name)
    m_list = [r["measured_ms"] for r in good]
    slow = [r["slow_ms"] for r in good]
    scored = {"raw": scores([r["predicted_ms"] for r in good], m_list),
              "raw_vs_slow": scores([r["predicted_ms"] for r in good], slow),
              "streaming_vs_slow": scores([r["streaming_ms"] for r in good], slow),
              "anchors": scores([r["calibrated_anchors_ms"] for r in good], slow),
              "cv": scores([r["calibrated_cv_ms"] for r in good], slow)}
    level = (statistics.median(sentinel_ms) / statistics.median(profile_sentinel)
             if sentinel_ms and profile_sentinel else None)
    level_errs = ([abs(100 * (level * r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"])
                   for r in good] if level else [])
    repeat = [r for r in good if "repeat_pct" in r]
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
        "rounds": args.rounds, "seconds_per_model": args.seconds,
        # the same share for two halves of the measurements themselves: the best any table
        # could score against measurements this noisy
        "repeat_within_10pct": (sum(abs(r["repeat_pct"]) <= 10 for r in repeat) / len(repeat)
                                if repeat else None),
        "repeat_mape_pct": (statistics.fmean(abs(r["repeat_pct"]) for r in repeat)
                            if repeat else None),
        "repeat_slow_within_10pct": (sum(abs(r["repeat_slow_pct"]) <= 10 for r in repeat)
                                     / len(repeat) if repeat else None),
        "sentinel_round_ms": sentinel_ms, "profile_sentinel_ms": profile_sentinel,
        # the machine's speed now against while it was profiled (the sentinel point, timed the
        # profile's way), and the scores of the predictions scaled by it: what is left is the
        # table's own error, not a shared machine's change of pace between the two
        "level": level,
        "within_10pct_at_level": (sum(e <= 10 for e in level_errs) / len(level_errs)
                                  if level_errs else None),
        "mape_pct_at_level": statistics.fmean(level_errs) if level_errs else None,
        "fingerprint": lut.fingerprint.to_json(),
        # held-out scores: raw table, calibrated on the anchors alone, cross-validated
        "scores": scored, "anchor_models": cal["anchor_models"],
        "anchor_calibration": cal["anchor_calibration"], "folds": args.folds,
        "cv_folds_applied": cal["cv_folds_applied"], "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(args.out)
    print()
    print(f"| models | within +-10% | MAPE | median APE | max APE | bias | repeat within "
          f"+-10% | profile wall ({summary['grid_points']} points) |")
    print("|---|---|---|---|---|---|---|---|")
    wall = "stored" if profile_s is None else f"{profile_s / 60:.1f} min"
    rep = summary["repeat_within_10pct"]
    if errs:
        print(f"| {len(good)} | {100 * summary['within_10pct']:.0f}% | {summary['mape_pct']:.1f}% "
              f"| {summary['median_ape_pct']:.1f}% | {summary['max_ape_pct']:.1f}% | "
              f"{summary['bias_pct']:+.1f}% | {'-' if rep is None else f'{100 * rep:.0f}%'} | "
              f"{wall} |")
    print()
    rep_slow = summary["repeat_slow_within_10pct"]
    print("| prediction | against | within +-10% | MAPE | bias | Kendall tau |")
    print("|---|---|---|---|---|---|")
    for name, what, against in (
            ("raw", "raw table", "pooled median"),
            ("raw_vs_slow", "raw table", "slow speed"),
            ("streaming_vs_slow", "raw table, streaming", "slow speed"),
            ("anchors", f"calibrated on the {cal['anchor_models']} anchors", "slow speed"),
            ("cv", f"calibrated, {args.folds}-fold cross-validated "
                   f"({cal['cv_folds_applied']} folds applied)", "slow speed")):
        sc = scored[name]
        if sc["within_10pct"] is not None:
            tau = sc["kendall_tau"]
            print(f"| {what} | {against} | {100 * sc['within_10pct']:.0f}% | "
                  f"{sc['mape_pct']:.1f}% | {sc['bias_pct']:+.1f}% | "
                  f"{'-' if tau is None else f'{tau:.2f}'} |")
    print(f"the models' own halves (even rounds against odd) agree within +-10%: "
          f"{'-' if rep is None else f'{100 * rep:.0f}%'} by pooled medians, "
          f"{'-' if rep_slow is None else f'{100 * rep_slow:.0f}%'} at the slow speed")
    if level:
        print(f"machine level now vs the profile's: {level:.3f} (sentinel); predictions scaled "
              f"by it: {100 * summary['within_10pct_at_level']:.0f}% within +-10%, MAPE "
              f"{summary['mape_pct_at_level']:.1f}%")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
