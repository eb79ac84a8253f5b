"""Compare: several cards exported with one runtime and quantization, benched side by side on
one device, with their speed and size ratios against a baseline card."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from merino_mobile.card import Card
from merino_mobile.deploy.bench import (
    DEFAULT_GENERATE,
    DEFAULT_PROMPT,
    DEFAULT_REPEAT,
    DEFAULT_ROUNDS,
    bench_side_by_side,
)
from merino_mobile.deploy.deploy import Candidate, deploy_dir, plan, write_report
from merino_mobile.deploy.report import compare_markdown, plot_rates, setup_title
from merino_mobile.errors import UserError
from merino_mobile.export import ExportResult, export, reusable_export
from merino_mobile.files import atomic_write_text, utc_now, write_json
from merino_mobile.target import Target
from merino_mobile.workspace import Workspace

SCHEMA_VERSION = 1


def check_request(cards: list[Card], baseline: str | None, fmt: str | None, quant: str,
                  prompt: int, generate: int, repeat: int, rounds: int) -> str:
    """Refuse a compare request that cannot run on any device (before a device is opened or a
    card exported); the baseline card's name."""
    if not cards:
        raise UserError("give at least one card to compare")
    names = [c.name for c in cards]
    if len(set(names)) != len(names):
        raise UserError(f"cards must have distinct names, got {names}")
    base = baseline or names[-1]
    if base not in names:
        raise UserError(f"--baseline {base!r} is not among the compared cards {names}")
    if fmt == "auto" or quant == "auto":
        raise UserError("compare measures every card with one --format and --quant (not auto)")
    if rounds < 1 or repeat < 1:
        raise UserError(f"--rounds and --repeat must be at least 1 (got {rounds}, {repeat})")
    for card in cards:
        if prompt + generate > card.context:
            raise UserError(f"--prompt {prompt} + --generate {generate} exceeds the context of "
                            f"card {card.name!r} ({card.context})")
    return base


def compare_dir(ws: Workspace, device: str, fmt: str, quant: str) -> Path:
    """The folder a compare on `device` writes: build/compare-<device>-<format>-<quant>/."""
    return ws.root / "build" / f"compare-{device}-{fmt}-{quant}"


def export_cards(ws: Workspace, cards: list[Card], target: Target, cache_len: int, *,
                 given: dict[str, ExportResult] | None = None,
                 say: Callable[[str], None] | None = None) -> list[tuple[ExportResult, float]]:
    """Each card's export for `target`'s device, format and quantization, and the seconds it
    took here: the one in `given` (by card name: made already, as a fleet compare does once for
    every device of one format and quantization), else the one `deploy` left in
    build/<card>/<device>-<format>-<quant>/artifact/ or an earlier compare left in the compare
    folder when of the same card and settings, else one exported now into the compare folder."""
    say = say or (lambda msg: None)
    given = given or {}
    device, fmt, quant = target.name, target.format.name, target.quant
    out = compare_dir(ws, device, fmt, quant)
    made = []
    for card in cards:
        t1 = time.perf_counter()
        where = out / card.name / "artifact"  # compare's own export, when deploy left none
        res = (given.get(card.name)
               or reusable_export(deploy_dir(ws, card.name, device, fmt, quant) / "artifact",
                                  card, fmt, quant, cache_len)
               or reusable_export(where, card, fmt, quant, cache_len))
        if res is None:
            say(f"exporting {card.name} ({fmt}, {quant})")
            res = export(card, fmt, quant, where, force=True, cache_len=cache_len,
                         verify=quant != "fp32")
        else:
            say(f"reusing the export of {card.name}: {res.artifact}")
        made.append((res, time.perf_counter() - t1))
    return made


def compare(ws: Workspace, cards: list[Card], device: str | Target | None = None,
            fmt: str | None = None,
            quant: str = "int8", *, baseline: str | None = None, prompt: int = DEFAULT_PROMPT,
            generate: int = DEFAULT_GENERATE, repeat: int = DEFAULT_REPEAT,
            rounds: int = DEFAULT_ROUNDS, force: bool = False, predict_latency: bool = True,
            command: str = "merino-mobile compare", say: Any = None,
            exported: dict[str, ExportResult] | None = None) -> dict[str, Any]:
    """Export every card with one runtime and quantization, bench them side by side, and give
    their speed and size ratios against the baseline card.

    The cards are benched in `rounds` interleaved rounds (`bench_side_by_side`), so every ratio
    comes from measurements taken together. An export `deploy` left in
    build/<card>/<device>-<format>-<quant>/artifact/ is reused when it is of the same card and
    settings; otherwise the card is exported into the compare folder (`export_cards`;
    `exported`: exports made already, by card name). Each card's report goes to
    build/compare-<device>-<format>-<quant>/<card>/; `deploy`'s own reports are not touched.
    The result is compare.json's object plus `reports`, each card's report by name.
    """
    say = say or (lambda msg: None)
    base = check_request(cards, baseline, fmt, quant, prompt, generate, repeat, rounds)
    names = [c.name for c in cards]
    target, _ = plan(ws, cards, device, fmt, quant, prompt, generate)
    device, fmt = target.name, target.format.name
    out = compare_dir(ws, device, fmt, quant)
    if (out / "compare.json").exists() and not force:
        raise UserError(f"{out / 'compare.json'} exists; pass --force to replace it")
    t0 = time.perf_counter()
    made = export_cards(ws, cards, target, prompt + generate, given=exported, say=say)
    # each card's own seconds: its export (when made now) and benches
    cands = [Candidate(fmt, quant, res.to_json(), None) for res, _ in made]
    spent = [s for _, s in made]
    benches = bench_side_by_side(
        ws, [Path(c.export["artifact"]) for c in cands], target, prompt=prompt,
        generate=generate, repeat=repeat, rounds=rounds,
        on_round=lambda r, n: say(f"bench round {r + 1} of {n}: {', '.join(names)}"))
    reports = {}
    for card, cand, b, own in zip(cards, cands, benches, spent, strict=True):
        cand.bench = b
        reports[card.name] = write_report(target, card, (fmt, quant), [cand], cand,
                                          out / card.name, predict_latency, command,
                                          own + b.wall_s)
    ref = reports[base]
    rows = []
    for card in cards:
        r = reports[card.name]
        tps = r["decode_tokens_per_s"]["median"]
        rows.append({
            "card": card.name, "params": r["card"]["params"], "size_bytes": r["size_bytes"],
            "ttft_ms": r["ttft_ms"]["median"], "decode_tokens_per_s": tps,
            "prefill_tokens_per_s": r["prefill_tokens_per_s"]["median"],
            "speedup": tps / ref["decode_tokens_per_s"]["median"],
            "size_ratio": ref["size_bytes"] / r["size_bytes"],
            "params_ratio": ref["card"]["params"] / r["card"]["params"],
            "report": str(Path(r["out_dir"]) / "report.md"),
        })
    out.mkdir(parents=True, exist_ok=True)
    result = {"schema_version": SCHEMA_VERSION, "kind": "merino-mobile-compare",
              "command": command, "date": utc_now(), "device": device, "format": fmt,
              "quant": quant, "baseline": base, "prompt": prompt, "generate": generate,
              "repeat": repeat, "rounds": rounds, "side_by_side": True, "rows": rows,
              "wall_s": round(time.perf_counter() - t0, 1), "out_dir": str(out)}
    result["plot"] = str(plot_rates(
        [r["card"] + (" (baseline)" if r["card"] == base else "") for r in rows],
        [b.decode_tokens_per_s for b in benches], [b.prefill_tokens_per_s for b in benches],
        out / "compare.png",
        f"compare on {setup_title(device, target.runtime, quant)}: baseline {base}",
        highlight=names.index(base)))
    write_json(out / "compare.json", result)
    atomic_write_text(out / "compare.md", compare_markdown(result))
    # the callers get each card's report as written, so nobody reads it back from disk
    return result | {"reports": reports}


