"""Reports of `deploy` and `compare`: report.json (versioned), report.md (readable on its own)
and matplotlib plots (predicted vs measured latency, tokens/s side by side)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from merino_mobile.units import human_bytes, human_count

PLOT_DPI = 110


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_prediction(prediction: dict[str, Any], path: Path) -> Path:
    """Bars of predicted vs measured ms for decode (per token) and prefill (whole prompt)."""
    plt = _plt()
    phases = [p for p in ("decode", "prefill") if prediction.get(p)]
    fig, axes = plt.subplots(1, len(phases), figsize=(4 * len(phases), 3.4), squeeze=False)
    for ax, phase in zip(axes[0], phases, strict=True):
        p = prediction[phase]
        bars = ax.bar(["predicted", "measured"], [p["predicted_ms"], p["measured_ms"]],
                      color=["#8da0cb", "#66c2a5"])
        bars[1].set_color("#fc8d62" if p["flagged"] else "#66c2a5")
        ax.set_ylabel("ms")
        ax.set_title(f"{phase} @ {p['length']}: error {p['error_pct']:+.1f}%")
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return path


def plot_rates(labels: list[str], decode: list[float], prefill: list[float], path: Path,
               title: str) -> Path:
    """Decode and prefill tokens/s of several runs (candidates or cards) side by side."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(labels) + 3), 3.6))
    for ax, values, name in ((axes[0], decode, "decode (tg)"), (axes[1], prefill,
                                                                 "prefill (pp)")):
        ax.bar(range(len(labels)), values, color="#66c2a5")
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("tokens/s")
        ax.set_title(name)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return path


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
        lines += ["", "![predicted vs measured](latency.png)", ""]
    else:
        lines += [f"No prediction: {(pred or {}).get('reason', 'no latency table')}.", ""]
    roof = r.get("roofline")
    if roof and roof.get("share") is not None:
        lines += ["## Memory roofline", "",
                  f"{human_bytes(roof['weight_bytes'])} of {r['quant']} weights read per token "
                  f"at {roof['bandwidth_gbs']:.1f} GB/s (measured copy bandwidth) take at least "
                  f"{roof['floor_ms']:.3g} ms: the measured decode reaches "
                  f"{100 * roof['share']:.0f}% of the memory roofline"
                  + (" (above 100%: the weights fit in the CPU caches, faster than the memory "
                     "copy measured)" if roof["share"] > 1 else "") + ".", ""]
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
