"""Reports of `deploy` and `compare`: report.json (versioned), report.md (readable on its own)
and matplotlib plots (predicted vs measured latency, tokens/s side by side).

Every plot shows the measured spread, not only a median: a bar is the median of the timed runs,
its whiskers span p10..p90, and the latency plot also draws each run as a dot, so a reader sees
at a glance whether a gap between two bars is larger than the noise. Each figure is built by a
`*_figure` function (returned, for tests to read its data) and written by the `plot_*` one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merino_mobile.units import human_bytes, human_count

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from merino_mobile.deploy.bench import BenchReport, Stat

PLOT_DPI = 110
PREDICTED, MEASURED, MISSED = "#8da0cb", "#66c2a5", "#fc8d62"
BUDGET, HIGHLIGHT = "#d62728", "#e78ac3"
SPREAD_LABEL = "p10-p90"  # the label of every spread's whiskers, how tests find them


def setup_title(device: str, runtime: str, quant: str) -> str:
    """The part of a plot's title that says where and how it was measured."""
    return f"{device} · {runtime} · {quant}"


def latency_budget(meta: dict[str, Any]) -> tuple[float | None, str | None]:
    """A designed card's decode latency budget in ms (its meta's `budgets.latency_ms`, written
    by `design`), or None; and, when the meta holds a budget that is not a positive number of
    ms, why it is not drawn (the card's meta is free-form, so a hand edit is reported, not
    fatal after a bench)."""
    budgets = meta.get("budgets")
    if not isinstance(budgets, dict) or budgets.get("latency_ms") is None:
        return None, None
    value = budgets["latency_ms"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        return None, (f"the card's meta budgets.latency_ms is {value!r}, not a positive number "
                      f"of ms: the latency plot has no budget line (fix the card or design it "
                      f"again)")
    return float(value), None


def _new_figure(ncols: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    # a bare Figure on the Agg canvas: no pyplot state to close, nothing shown; the constrained
    # layout keeps the title and the legend under the panels clear of them
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PLOT_DPI)
    return path


def _spread_label(stats: list[Stat]) -> str:
    ns = sorted({s.n for s in stats})
    runs = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    return f"{SPREAD_LABEL} of {runs} runs"


def _legend_below(fig: Figure, axes: list[Axes]) -> None:
    """One legend under the panels with every panel's entries once (the panels share them)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside lower center",
               ncols=min(len(seen), 3), fontsize=8, frameon=False)


def _whiskers(ax: Axes, xs: list[float], stats: list[Stat], capsize: float) -> None:
    med = [s.median for s in stats]
    ax.errorbar(xs, med, yerr=[[s.median - s.p10 for s in stats],
                               [s.p90 - s.median for s in stats]],
                fmt="none", ecolor="black", capsize=capsize, lw=1.2,
                label=_spread_label(stats))


def prediction_figure(prediction: dict[str, Any], bench: BenchReport, *, title: str,
                      budget_ms: float | None = None, design_context: int | None = None
                      ) -> Figure:
    """Decode ms per token and time to first token: the measured median with its p10..p90
    whiskers and every run as a dot, the latency table's prediction beside it when
    `prediction` has one, and `budget_ms` (a designed card's latency budget) as a labelled
    line on the decode panel. `title` names the card and setup (see `setup_title`)."""
    phases = (("decode", "decode ms/token", "context", bench.decode_ms_per_token,
               bench.decode_samples_ms, bench.decode_context),
              ("prefill", "time to first token", "prompt", bench.ttft_ms,
               bench.ttft_samples_ms, bench.prompt))
    fig, axes = _new_figure(2, 8.4, 4.4)
    for ax, (phase, name, at, stat, samples, length) in zip(axes, phases, strict=True):
        p = prediction.get(phase)
        x = 1 if p else 0
        if p:
            ax.bar([0], [p["predicted_ms"]], color=PREDICTED, width=0.6,
                   label="predicted (latency table)")
        flagged = bool(p and p["flagged"])
        ax.bar([x], [stat.median], color=MISSED if flagged else MEASURED, width=0.6,
               label="measured median" + (", off the prediction by > 10%" if flagged else ""))
        _whiskers(ax, [x], [stat], capsize=6)
        if samples:
            # spread the dots sideways a little so that equal runs stay visible
            offsets = [0.18 * (2 * i / max(len(samples) - 1, 1) - 1) for i in
                       range(len(samples))]
            ax.plot([x + o for o in offsets], samples, "o", ms=3.5, color="#333333", alpha=0.7,
                    label="each timed run", gid="runs")
        ticks = ["predicted", "measured"] if p else ["measured"]
        ax.set_xticks(range(len(ticks)), ticks)
        ax.set_xlim(-0.7, len(ticks) - 0.3)
        ax.set_ylabel("ms")
        verdict = f"prediction off by {p['error_pct']:+.1f}%" if p else "no prediction"
        ax.set_title(f"{name} at {at} {length}\n{verdict}", fontsize=9)
        if phase == "decode" and budget_ms is not None:
            where = f" (designed at context {design_context})" if design_context else ""
            ax.axhline(budget_ms, color=BUDGET, ls="--", lw=1.4, gid="budget",
                       label=f"latency budget {budget_ms:.3g} ms/token{where}")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    _legend_below(fig, axes)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_prediction(prediction: dict[str, Any], path: Path, *, bench: BenchReport, title: str,
                    budget_ms: float | None = None, design_context: int | None = None) -> Path:
    """Write `prediction_figure` as a PNG at `path`."""
    return _save(prediction_figure(prediction, bench, title=title, budget_ms=budget_ms,
                                   design_context=design_context), path)


def rates_figure(labels: list[str], decode: list[Stat], prefill: list[Stat], title: str, *,
                 highlight: int | None = None) -> Figure:
    """Decode and prefill tokens/s of several runs (candidates or cards) side by side: each bar
    the median, its whiskers p10..p90; bar number `highlight` (the chosen candidate, the
    baseline) in another colour."""
    if not (len(labels) == len(decode) == len(prefill)):
        raise ValueError(f"{len(labels)} labels for {len(decode)} decode and {len(prefill)} "
                         f"prefill rates")
    fig, axes = _new_figure(2, max(6.5, 1.6 * len(labels) + 3), 4.2)
    colors = [HIGHLIGHT if i == highlight else MEASURED for i in range(len(labels))]
    for ax, stats, name in ((axes[0], decode, "decode (tg)"), (axes[1], prefill, "prefill (pp)")):
        xs = list(range(len(labels)))
        ax.bar(xs, [s.median for s in stats], color=colors)
        _whiskers(ax, xs, stats, capsize=5)
        ax.set_xticks(xs, labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("tokens/s (bar: median)")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    _legend_below(fig, axes)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_rates(labels: list[str], decode: list[Stat], prefill: list[Stat], path: Path,
               title: str, *, highlight: int | None = None) -> Path:
    """Write `rates_figure` as a PNG at `path`."""
    return _save(rates_figure(labels, decode, prefill, title, highlight=highlight), path)


def _ms(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3g} ms"


def deploy_markdown(r: dict[str, Any]) -> str:
    """report.md of a deploy: what ran, where, the numbers, the plots."""
    from merino_mobile.deploy.bench import BenchReport, llama_bench_markdown

    b = BenchReport.from_json(r["bench"])
    fp = r["fingerprint"]
    card = r["card"]
    lines = [
        f"# {card['name']} on {r['device']} ({r['format']}, {r['quant']})", "",
        f"Written by `{r['command']}` on {r['date']}.", "",
        "## Device", "",
        f"- {fp.get('model')}; {fp.get('cpu')}, {fp.get('cores')} cores; {fp.get('os')} "
        f"({fp.get('abi')})",
        f"- runtime {fp.get('runtime')} {fp.get('runtime_version')}, {b.threads} threads"
        + (f", pinned to cpus {b.cpus}" if b.cpus else ""),
        f"- fingerprint key `{fp.get('key')}`", "",
        "## Model", "",
        f"- card `{card['name']}`: {human_count(card['params'])} parameters, depth "
        f"{card['depth']}, vocab {card['vocab']}, KV cache of {r['cache_len']} positions",
        f"- artifact `{r['artifact']}` ({human_bytes(b.size_bytes)}), exported in "
        f"{r['export']['export_seconds']:.1f} s; verification against fp32: "
        f"{_verdict(r['export'].get('verification', {}))}", "",
        "## Measured", "",
        llama_bench_markdown([b]), "",
        f"Median [p10, p90] over {b.repeat} runs after warm-up"
        + (f" ({b.rounds} rounds of {b.repeat // b.rounds}, benched side by side with the "
           f"other cards of a compare)" if b.rounds > 1 else "")
        + f". Prompt {b.prompt} tokens, "
        f"generation {b.generate} tokens (decode timed at positions "
        f"{', '.join(map(str, b.decode_positions))}: "
        f"{', '.join(f'{v:.3g} ms' for v in b.decode_positions.values())}).", "",
        "| metric | value |", "| --- | ---: |",
        f"| load (program + method) | {_ms(b.load_ms)} |",
        f"| time to first token ({b.prompt} tokens) | {_ms(b.ttft_ms.median)} |",
        f"| decode per token | {_ms(b.decode_ms_per_token.median)} |",
        f"| decode tokens/s | {b.decode_tokens_per_s.median:.2f} |",
        f"| prefill tokens/s | {b.prefill_tokens_per_s.median:.2f} |",
        f"| peak RSS of the runtime process | "
        f"{human_bytes(b.peak_rss_bytes) if b.peak_rss_bytes else '-'} |",
        f"| artifact size | {human_bytes(b.size_bytes)} |", "",
    ]
    ppl = r.get("perplexity")
    if ppl:
        lines += ["## Quality", "",
                  f"Perplexity on the held-out split of `{ppl['corpus']}` "
                  f"({ppl['tokens_scored']} tokens, {ppl['evaluated_on']}): "
                  f"{ppl['perplexity']:.3f} for this {r['quant']} artifact against "
                  f"{ppl['fp32_perplexity']:.3f} for the fp32 model, "
                  f"{ppl['perplexity_increase_pct']:+.2f}%.", ""]
    pred = r.get("prediction")
    lines += ["## Predicted vs measured", ""]
    if pred and pred.get("decode"):
        lines += [f"Latency table `{pred['lut']}` ({pred['lut_fingerprint']}).", "",
                  "| phase | length | predicted | measured | error | |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for phase in ("decode", "prefill"):
            p = pred.get(phase)
            if p:
                lines.append(f"| {phase} | {p['length']} | {_ms(p['predicted_ms'])} | "
                             f"{_ms(p['measured_ms'])} | {p['error_pct']:+.1f}% | "
                             f"{'**> 10%**' if p['flagged'] else 'ok'} |")
        lines += [""]
    else:
        lines += [f"No prediction: {(pred or {}).get('reason', 'no latency table')}.", ""]
    if any(Path(p).name == "latency.png" for p in r.get("plots", [])):
        lines += ["Bars are medians, whiskers p10-p90 of the timed runs, dots the runs; a "
                  "designed card's latency budget is the dashed line.", "",
                  "![predicted vs measured](latency.png)", ""]
    roof = r.get("roofline")
    if roof and roof.get("share") is not None:
        lines += ["## Memory roofline", "",
                  f"{human_bytes(roof['weight_bytes'])} of {r['quant']} weights and "
                  f"{human_bytes(roof.get('kv_bytes', 0))} of KV cache read per token at "
                  f"{roof['bandwidth_gbs']:.1f} GB/s (measured read bandwidth) take at least "
                  f"{roof['floor_ms']:.3g} ms: the measured decode reaches "
                  f"{100 * roof['share']:.0f}% of the memory roofline"
                  + (" (above 100%: the weights fit in the CPU caches, faster than the memory "
                     "read measured)" if roof["share"] > 1 else "") + ".", ""]
    if r.get("candidates"):
        lines += ["## Candidates (--format auto / --quant auto)", "",
                  "| format | quant | decode tokens/s | size | greedy agreement | cosine min | "
                  "quality | chosen |", "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
        for c in r["candidates"]:
            q = c["quality"]
            lines.append(
                f"| {c['format']} | {c['quant']} | "
                f"{_rate(c['decode_tokens_per_s'])} | "
                f"{human_bytes(c['size_bytes']) if c['size_bytes'] else '-'} | "
                f"{_num(q.get('greedy_agreement'))} | {_num(q.get('cosine_min'))} | "
                f"{'ok' if c['quality_ok'] else 'below floor'} | "
                f"{'**yes**' if c['chosen'] else ''} |")
        lines += ["", f"Quality floor: {r['quality_floor']}.", ""]
    if r.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in r["warnings"]] + [""]
    lines += ["## Plots", "", "![tokens/s](throughput.png)", ""]
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _verdict(v: dict[str, Any]) -> str:
    if v.get("passed") is None:
        return "not run"
    keys = ", ".join(f"{k} {v[k]:.4g}" for k in ("greedy_agreement", "cosine_min", "max_rel_err")
                     if isinstance(v.get(k), int | float))
    return f"{'passed' if v['passed'] else 'FAILED'} ({keys})"


def compare_markdown(c: dict[str, Any]) -> str:
    """compare.md: every card's numbers and its ratios against the baseline."""
    lines = [f"# Compare on {c['device']} ({c['format']}, {c['quant']})", "",
             f"Written by `{c['command']}` on {c['date']}. Baseline: `{c['baseline']}`. "
             f"Prompt {c['prompt']}, generation {c['generate']}. The cards were benched side "
             f"by side: {c.get('rounds', 1)} rounds, each running every card ({c['repeat']} "
             f"timed runs per phase), in reverse order every other round; each number pools "
             f"all of a card's runs. Speedup = decode tokens/s over the baseline's, size ratio "
             f"= baseline bytes over the card's, both from the very measurements below.", "",
             "| card | params | size | TTFT | decode tokens/s | speedup | size ratio | "
             "params ratio |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in c["rows"]:
        lines.append(f"| {row['card']} | {human_count(row['params'])} | "
                     f"{human_bytes(row['size_bytes'])} | {_ms(row['ttft_ms'])} | "
                     f"{row['decode_tokens_per_s']:.2f} | {row['speedup']:.2f}x | "
                     f"{row['size_ratio']:.2f}x | {row['params_ratio']:.2f}x |")
    lines += ["", "![tokens/s](compare.png)", ""]
    lines += [f"- {row['card']}: report `{row['report']}`" for row in c["rows"]]
    return "\n".join(lines) + "\n"
