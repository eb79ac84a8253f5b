"""The plots of `deploy`, `compare` and a design sweep: written as PNGs, and carrying the measured
spread (p10..p90 whiskers, the runs), a designed card's latency budget, the chosen designs and a
title naming device, runtime and quantization, all read back from the figures' data. The inputs
are built by hand (a BenchReport of made-up runs), so nothing is exported or run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from matplotlib.collections import LineCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.lines import Line2D

from merino_mobile.card import Block, Card
from merino_mobile.deploy import report
from merino_mobile.deploy.bench import BenchReport, Stat
from merino_mobile.deploy.deploy import Candidate, write_report
from merino_mobile.device.base import Fingerprint
from merino_mobile.target import resolve_target
from merino_mobile.workspace import Workspace

DECODE_MS = [10.0, 10.5, 11.0, 12.0, 14.0]  # one ms/token per timed run
TTFT_MS = [80.0, 82.0, 85.0, 90.0, 99.0]
PROMPT = 8
CARD = Card(name="tiny", vocab=256, context=32, head_dim=16, blocks=(Block(64, 2.0, 4, 1),))


def fingerprint(runtime: str = "executorch", quant: str = "int8") -> dict:
    return Fingerprint("host", "test box", "cpu", 4, "linux", "x86_64", runtime, "1.0", 4,
                       quant).to_json()


def bench(decode: list[float] = DECODE_MS, ttft: list[float] = TTFT_MS,
          artifact: str = "model.pte") -> BenchReport:
    """A bench report of these runs, its statistics as `bench` computes them."""
    return BenchReport(
        artifact=artifact, device="host", runtime="executorch", fingerprint=fingerprint(),
        prompt=PROMPT, generate=8, repeat=len(decode), threads=4, size_bytes=123_456,
        ttft_ms=Stat.of(ttft), prefill_tokens_per_s=Stat.of([PROMPT * 1000 / t for t in ttft]),
        decode_ms_per_token=Stat.of(decode),
        decode_tokens_per_s=Stat.of([1000 / t for t in decode]),
        decode_positions={8: decode[0], 15: decode[-1]}, load_ms=5.0,
        ttft_samples_ms=list(ttft), decode_samples_ms=list(decode))


def prediction(b: BenchReport, decode_ms: float = 9.0, prefill_ms: float = 100.0) -> dict:
    out = {"lut": "lut.json", "lut_fingerprint": "host"}
    for phase, length, pred, measured in (("decode", 16, decode_ms, b.decode_ms_per_token.median),
                                          ("prefill", PROMPT, prefill_ms, b.ttft_ms.median)):
        err = 100 * (pred - measured) / measured
        out[phase] = {"length": length, "predicted_ms": pred, "measured_ms": measured,
                      "error_pct": err, "flagged": abs(err) > 10}
    return out


def spreads(ax) -> list[tuple[float, float, float]]:
    """(x, low, high) of every whisker the axes draw, from its errorbar containers."""
    out = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            (segments,) = [lc for lc in c.lines[2] if isinstance(lc, LineCollection)]
            for seg in segments.get_segments():
                (x0, y0), (x1, y1) = seg
                assert x0 == x1
                out.append((float(x0), float(min(y0, y1)), float(max(y0, y1))))
    return out


def by_gid(ax, gid: str) -> list[Line2D]:
    return [line for line in ax.get_lines() if line.get_gid() == gid]


def legend_texts(fig) -> list[str]:
    """The entries of the legend under the panels."""
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()]


def bar_heights(ax) -> list[float]:
    return [p.get_height() for p in ax.patches]


# -- deploy's predicted vs measured ------------------------------------------------------------

def test_latency_plot_has_the_spread_the_runs_and_the_budget(tmp_path):
    b = bench()
    fig = report.prediction_figure(prediction(b), b, title="tiny on host · executorch · int8",
                                   budget_ms=13.0, design_context=512)
    decode, prefill = fig.axes[:2]
    assert fig.get_suptitle() == "tiny on host · executorch · int8"
    for ax, stat, runs, pred in ((decode, b.decode_ms_per_token, DECODE_MS, 9.0),
                                 (prefill, b.ttft_ms, TTFT_MS, 100.0)):
        assert bar_heights(ax) == pytest.approx([pred, stat.median])
        ((x, low, high),) = spreads(ax)
        assert x == 1 and (low, high) == pytest.approx((stat.p10, stat.p90))
        assert low < stat.median < high  # the made-up runs do spread
        (dots,) = by_gid(ax, "runs")
        assert sorted(dots.get_ydata()) == sorted(runs)
        assert all(0.7 < x < 1.3 for x in dots.get_xdata())  # over the measured bar
    (line,) = by_gid(decode, "budget")
    assert list(line.get_ydata()) == [13.0, 13.0]
    assert "latency budget 13 ms" in line.get_label() and "context 512" in line.get_label()
    assert decode.get_ylim()[1] > 13.0  # the line is inside the panel, not clipped away
    assert by_gid(prefill, "budget") == []  # the budget is per decoded token
    legend = legend_texts(fig)
    assert "p10-p90 of 5 runs" in legend and "each timed run" in legend
    assert any(t.startswith("latency budget 13 ms/token") for t in legend)
    # plot_prediction writes the same figure
    path = report.plot_prediction(prediction(b), tmp_path / "sub" / "latency.png", bench=b,
                                  title="t", budget_ms=13.0)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_latency_plot_without_a_prediction_or_budget_shows_the_measured_spread():
    b = bench()
    fig = report.prediction_figure({"reason": "--no-predict"}, b, title="t")
    decode, prefill = fig.axes[:2]
    assert bar_heights(decode) == pytest.approx([b.decode_ms_per_token.median])
    ((x, low, high),) = spreads(decode)
    assert x == 0 and (low, high) == pytest.approx((b.decode_ms_per_token.p10,
                                                    b.decode_ms_per_token.p90))
    assert by_gid(decode, "budget") == [] and "no prediction" in decode.get_title()
    assert [t.get_text() for t in decode.get_xticklabels()] == ["measured"]


def test_a_flagged_prediction_colours_the_measured_bar():
    b = bench()
    good = report.prediction_figure(prediction(b, decode_ms=b.decode_ms_per_token.median), b,
                                    title="t").axes[0]
    bad = report.prediction_figure(prediction(b, decode_ms=5.0), b, title="t").axes[0]
    assert good.patches[1].get_facecolor() != bad.patches[1].get_facecolor()


# -- the card's budget -------------------------------------------------------------------------

@pytest.mark.parametrize("meta, expected", [
    ({}, None), ({"budgets": {"params": 60e6}}, None), ({"budgets": {"latency_ms": None}}, None),
    ({"budgets": {"latency_ms": 50}}, 50.0), ({"budgets": {"latency_ms": 12.5}}, 12.5)])
def test_latency_budget_of_a_card(meta, expected):
    assert report.latency_budget(meta) == (expected, None)


@pytest.mark.parametrize("value", ["50ms", -3, 0, True, float("inf")])
def test_a_malformed_budget_is_reported_not_drawn(value):
    budget, why = report.latency_budget({"budgets": {"latency_ms": value}})
    assert budget is None and "budgets.latency_ms" in why and repr(value) in why


# -- compare's and deploy's tokens/s -----------------------------------------------------------

def test_rates_plot_has_each_bars_spread(tmp_path):
    a, c = bench(), bench(decode=[5.0, 5.5, 6.0, 7.0, 9.0], ttft=[40.0, 41.0, 45.0, 50.0, 60.0])
    title = "compare on host · executorch · int8: baseline b"
    fig = report.rates_figure(["a", "b (baseline)"], [a.decode_tokens_per_s,
                                                      c.decode_tokens_per_s],
                              [a.prefill_tokens_per_s, c.prefill_tokens_per_s], title,
                              highlight=1)
    assert fig.get_suptitle() == title
    for ax, stats in ((fig.axes[0], [a.decode_tokens_per_s, c.decode_tokens_per_s]),
                      (fig.axes[1], [a.prefill_tokens_per_s, c.prefill_tokens_per_s])):
        assert bar_heights(ax) == pytest.approx([s.median for s in stats])
        got = sorted(spreads(ax))
        assert [x for x, _, _ in got] == [0, 1]
        for (_, low, high), s in zip(got, stats, strict=True):
            assert (low, high) == pytest.approx((s.p10, s.p90)) and low < s.median < high
        assert ax.patches[0].get_facecolor() != ax.patches[1].get_facecolor()  # the baseline
    assert legend_texts(fig) == ["p10-p90 of 5 runs"]
    path = report.plot_rates(["a"], [a.decode_tokens_per_s], [a.prefill_tokens_per_s],
                             tmp_path / "rates.png", title)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_rates_plot_refuses_lists_of_different_lengths():
    a = bench()
    with pytest.raises(ValueError, match="2 labels for 1 decode"):
        report.rates_figure(["a", "b"], [a.decode_tokens_per_s], [a.prefill_tokens_per_s], "t")


# -- write_report: what deploy and compare hand the plots --------------------------------------

@pytest.fixture
def figures(monkeypatch) -> dict[str, list]:
    """Every figure the report module builds, by kind, besides being written."""
    seen: dict[str, list] = {"prediction": [], "rates": []}
    for kind in seen:
        real = getattr(report, f"{kind}_figure")

        def spy(*args, _real=real, _kind=kind, **kwargs):
            fig = _real(*args, **kwargs)
            seen[_kind].append(fig)
            return fig

        monkeypatch.setattr(report, f"{kind}_figure", spy)
    return seen


def test_write_report_plots_a_designed_cards_budget_and_spread(tmp_path, figures):
    ws = Workspace(tmp_path)
    # the host's read bandwidth, as `deploy` keeps it once measured (no sweep here)
    (ws.devices / "host").mkdir(parents=True)
    (ws.devices / "host" / "bandwidth.json").write_text(json.dumps(
        {"schema_version": 2, "bytes_per_s": 1e10}))
    target = resolve_target(ws, "host", "executorch", "int8")
    card = replace(CARD, meta={"designed_by": "merino-mobile design",
                               "budgets": {"latency_ms": 13.0}, "context": 512})
    b = bench(artifact=str(tmp_path / "artifact" / "model.pte"))
    cand = Candidate("executorch", "int8", {"artifact": b.artifact, "export_seconds": 1.0}, b)
    r = write_report(target, card, ("executorch", "int8"), [cand], cand, tmp_path / "out",
                     False, "merino-mobile deploy", 1.0)
    out = tmp_path / "out"
    assert r["plots"] == [str(out / "latency.png"), str(out / "throughput.png")]
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in r["plots"])
    (lat,) = figures["prediction"]
    assert lat.get_suptitle() == "tiny: predicted vs measured on host · executorch · int8"
    (line,) = by_gid(lat.axes[0], "budget")
    assert line.get_ydata()[0] == 13.0 and "context 512" in line.get_label()
    ((_, low, high),) = spreads(lat.axes[0])
    assert (low, high) == pytest.approx((b.decode_ms_per_token.p10, b.decode_ms_per_token.p90))
    (rates,) = figures["rates"]
    assert rates.get_suptitle() == "tiny: tokens/s on host · executorch · int8"
    ((_, low, high),) = spreads(rates.axes[0])
    assert (low, high) == pytest.approx((b.decode_tokens_per_s.p10, b.decode_tokens_per_s.p90))
    md = (out / "report.md").read_text()
    assert "![predicted vs measured](latency.png)" in md and "p10-p90" in md


def test_write_report_warns_of_a_malformed_budget(tmp_path, figures):
    ws = Workspace(tmp_path)
    (ws.devices / "host").mkdir(parents=True)
    (ws.devices / "host" / "bandwidth.json").write_text(json.dumps(
        {"schema_version": 2, "bytes_per_s": 1e10}))
    target = resolve_target(ws, "host", "executorch", "int8")
    card = replace(CARD, meta={"budgets": {"latency_ms": "13ms"}})
    b = bench(artifact=str(tmp_path / "model.pte"))
    cand = Candidate("executorch", "int8", {"artifact": b.artifact, "export_seconds": 1.0}, b)
    r = write_report(target, card, ("executorch", "int8"), [cand], cand, tmp_path / "out",
                     False, "merino-mobile deploy", 1.0)
    assert any("budgets.latency_ms is '13ms'" in w for w in r["warnings"])
    assert by_gid(figures["prediction"][0].axes[0], "budget") == []


def test_spread_helper_reads_what_errorbar_draws():
    # the helper the tests above rely on, against a plain errorbar
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    ax.errorbar([2], [5.0], yerr=[[1.0], [3.0]], fmt="none")
    assert spreads(ax) == [(2.0, 4.0, 8.0)]


# -- a design sweep's Pareto plot --------------------------------------------------------------

def test_sweep_plot_marks_the_chosen_designs_and_the_infeasible_budgets(tmp_path):
    from merino_mobile.design import format_budget, sweep
    from merino_mobile.entropy import EntropySettings
    from merino_mobile.space import Space
    from merino_mobile.units import Range

    space = Space(name="t", vocab=256, context=64, head_dim=16, widths=(16, 32),
                  ffn_ratios=(1.0, 2.0), max_blocks=2, min_depth=0, max_depth=2)
    # deepmad: every layer adds to it, so the chosen design grows along the range
    deepmad = EntropySettings(rho=1.0, objective="deepmad", effectiveness="deepmad")
    result = sweep(space, {"params": Range(2e3, 6e4, 4e3)}, "params", deepmad, 64, "int8", None,
                   "exact", {})
    frontier = result.frontier()
    infeasible = [p.budget for p in result.points if p.design is None]
    repeated = [p for p in result.points if p.design and p not in frontier]
    assert len(frontier) >= 2 and infeasible and repeated  # the range covers all three cases
    fig = result.figure()
    (ax,) = fig.axes
    (line,) = by_gid(ax, "chosen")
    assert list(line.get_xdata()) == [p.design.metrics.params for p in frontier]
    assert list(line.get_ydata()) == [p.design.metrics.entropy for p in frontier]
    (crosses,) = by_gid(ax, "infeasible")
    assert list(crosses.get_xdata()) == infeasible
    # the larger budgets that gave the same design are in its label, not drawn again
    assert by_gid(ax, "dominated") == []
    last = [t.get_text() for t in ax.texts][-1]
    assert result.points[-1] in repeated and last == (
        f"budget {format_budget('params', frontier[-1].budget)}-"
        f"{format_budget('params', result.points[-1].budget)}")
    assert "any device and runtime (no latency budget) · int8, context 64" in ax.get_title()
    path = result.plot(tmp_path / "build" / "pareto.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_sweep_plot_draws_a_dominated_design_of_its_own():
    from merino_mobile.design import Sweep, SweepPoint
    from merino_mobile.design.problem import Design, Metrics, SolverInfo

    def point(budget: float, params: int, entropy: float) -> SweepPoint:
        m = Metrics(entropy, 0.1, 4, params, 0, 0, 0, None)
        return SweepPoint(budget, Design((), m, SolverInfo("ea", 1.0, False)))

    # the evolutionary solver may find a costlier design no better than a smaller budget's
    result = Sweep("params", [point(10e6, 9e6, 50.0), point(20e6, 18e6, 50.0),
                              point(30e6, 29e6, 60.0)], "int8", 512)
    (ax,) = result.figure().axes
    (line,) = by_gid(ax, "chosen")
    assert list(line.get_xdata()) == [9e6, 29e6]
    (dominated,) = by_gid(ax, "dominated")
    assert list(dominated.get_xdata()) == [18e6] and list(dominated.get_ydata()) == [50.0]
    assert by_gid(ax, "infeasible") == []


class FlatTable:
    """A latency table of made-up constant terms, named like a measured one (Lut)."""

    device, runtime, quant = "pixel7", "executorch", "int4"

    def fixed(self, phase="decode"):
        return 0.2

    def layer(self, width, ffn_ratio, heads, context, phase="decode"):
        return 0.001 * width * ffn_ratio

    def projection(self, width_in, width_out, phase="decode", context=1):
        return 0.01

    def embedding(self, width, vocab, phase="decode", context=1):
        return 0.01

    def head(self, width, vocab, phase="decode"):
        return 0.001 * width


def test_a_latency_sweeps_plot_names_the_tables_device_and_runtime():
    from merino_mobile.design import sweep
    from merino_mobile.entropy import EntropySettings
    from merino_mobile.space import Space
    from merino_mobile.units import Range

    space = Space(name="t", vocab=256, context=64, head_dim=16, widths=(16, 32),
                  ffn_ratios=(1.0, 2.0), max_blocks=2, min_depth=0, max_depth=2)
    result = sweep(space, {"latency_ms": Range(0.3, 0.5, 0.1)}, "latency_ms",
                   EntropySettings(rho=1.0), 64, "int4", FlatTable(), "exact", {})
    assert result.frontier()
    (ax,) = result.figure().axes
    assert "pixel7 · executorch · int4, context 64" in ax.get_title()
    (line,) = by_gid(ax, "chosen")
    assert list(line.get_xdata()) == [p.design.metrics.latency_ms for p in result.frontier()]
    assert "predicted latency per token" in ax.get_xlabel()
