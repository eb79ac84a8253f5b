"""The latency table: exact on grid points, sensible between them, refuses the wrong device."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from merino_mobile.card import Block, Card
from merino_mobile.device.base import BENCH_VERSION, Fingerprint
from merino_mobile.errors import UserError
from merino_mobile.latency import predict_latency
from merino_mobile.latency.micro import copies
from merino_mobile.latency.store import Point, Row
from merino_mobile.latency.table import Lut, load_lut, lut_path, read_lut, reading_of
from merino_mobile.workspace import Workspace

FP = Fingerprint("host", "box", "cpu", 2, "Linux", "x86_64", "executorch", "1.5.1", 2, "fp32")
WIDTHS = (64, 128, 256)
RATIOS = (1.0, 2.0, 4.0)
CONTEXTS = (16, 64)


def cost(w: int, r: float, c: int) -> float:
    """A made-up device: per-layer cost with FLOPs-like growth plus noise-free structure."""
    return 0.01 + 2e-7 * (4 * w * w + 2 * w * w * r) + 1e-6 * w * c


def rows(quant: str = "fp32") -> list[Row]:
    """Raw measurements of the made-up device, as the profiler stores them for a device without
    `replicates`: a decode micro-model runs `copies` instances of its term in one call (see
    `merino_mobile.latency.micro.STREAM_BYTES`), plus one call's overhead of 0.005 ms."""
    out = []

    def row(p: Point, ms: float) -> None:
        n = 1 if p.term in ("null", "fixed") else copies(p, quant)
        ms = 0.005 + (ms - 0.005) * n
        out.append(Row(p, ms, ms, ms, 5, None, 2, (), "now", len(out) + 1, n))

    row(Point("null", "decode", context=1), 0.005)
    for c in CONTEXTS:
        row(Point("fixed", "decode", context=c), 0.02)
    for w in WIDTHS:
        row(Point("head", "decode", width=w, vocab=256), 0.005 + 1e-6 * w)
        row(Point("embedding", "decode", width=w, vocab=4096, context=1), 0.006)
        for r in RATIOS:
            for c in CONTEXTS:
                row(Point("layer", "decode", width=w, ffn_ratio=r, heads=w // 32, context=c),
                    0.005 + cost(w, r, c))
        for b in WIDTHS:
            if b != w:
                row(Point("projection", "decode", width=w, width_out=b, context=1),
                    0.005 + 1e-7 * w * b)
    # a failed point is kept out of the table and named
    out.append(Row(Point("head", "decode", width=512, vocab=256), None, None, None, 0,
                   "runtime worker killed by SIGSEGV", 2, (), "now", 999))
    return out


def test_exact_on_grid_points_after_removing_the_call_overhead():
    lut = Lut.from_rows(rows(), FP, "executorch", "fp32")
    for w in WIDTHS:
        for r in RATIOS:
            for c in CONTEXTS:
                assert lut.layer(w, r, w // 32, c) == pytest.approx(cost(w, r, c), rel=1e-12)
    assert lut.projection(64, 256) == pytest.approx(1e-7 * 64 * 256)
    assert lut.projection(128, 128) == 0.0
    assert lut.fixed("decode") == pytest.approx(0.02)
    assert lut.failed == ["head[decode](width=512, vocab=256): runtime worker killed by SIGSEGV"]


def test_a_point_read_in_several_passes_gets_the_median_of_its_readings():
    base = rows()
    layers = [r for r in base if r.point.term == "layer"]
    layer, other = layers[0], layers[-1]
    null = next(r for r in base if r.point.term == "null")

    def reading(r: Row, k: int, ms: float) -> Row:
        return replace(r, point=replace(r.point, reading=k), median_ms=ms)

    # the layer read twice more, at one speed; the null twice more; one reading failed
    more = [reading(layer, 1, 1.5 * layer.median_ms), reading(layer, 2, 1.1 * layer.median_ms),
            reading(null, 1, 0.004), reading(null, 2, 0.006),
            replace(reading(layer, 3, 0.0), median_ms=None, error="reading lost")]
    # another layer read once more, three times as slow: its passes ran at two speeds
    more.append(reading(other, 1, 3 * other.median_ms))
    lut = Lut.from_rows(base + more, FP, "executorch", "fp32")
    p = layer.point
    n = layer.per_call
    want = (1.1 * layer.median_ms - 0.005) / n  # median of 1, 1.1 and 1.5 times; null's median
    assert lut.layer(p.width, p.ffn_ratio, p.heads, p.context) == pytest.approx(want)
    # at two speeds the slow reading is the term, as `design --verify` judges a budget
    q = other.point
    want = (3 * other.median_ms - 0.005) / other.per_call
    assert lut.layer(q.width, q.ffn_ratio, q.heads, q.context) == pytest.approx(want)
    assert reading_of([1.0, 1.1, 3.0]) == 3.0 and reading_of([1.0, 1.5]) == 1.25
    assert reading_of([2.0, 1.0, 1.1, 2.2]) == 2.1 and reading_of([0.0, 1.0]) == 0.5
    # one entry per point in the table, and a failed reading of a read point is no failure
    assert len(lut.entries["layer"]["decode"]) == len({r.point for r in base
                                                        if r.point.term == "layer"})
    assert not any("reading lost" in f for f in lut.failed)
    assert Point.from_key(replace(p, reading=2).key).reading == 2 and "reading" not in p.key


def test_between_and_beyond_the_grid():
    lut = Lut.from_rows(rows(), FP, "executorch", "fp32")
    # between grid points the FLOPs model carries the quadratic shape: close to the truth
    for w, r, c in ((192, 3.0, 32), (96, 1.5, 40), (160, 2.5, 20)):
        assert lut.layer(w, r, w // 32, c) == pytest.approx(cost(w, r, c), rel=0.03)
    # monotone in width and context
    assert lut.layer(96, 2.0, 3, 16) < lut.layer(192, 2.0, 6, 16) < lut.layer(256, 2.0, 8, 16)
    assert lut.layer(128, 2.0, 4, 20) < lut.layer(128, 2.0, 4, 60)
    # beyond the grid it extrapolates in FLOPs, not flat
    assert lut.layer(512, 4.0, 16, 64) > 3 * lut.layer(256, 4.0, 8, 64)
    assert lut.head(512, 256) > lut.head(256, 256)
    # prefill without prefill points: T decode steps
    assert lut.layer(64, 1.0, 2, 16, "prefill") == pytest.approx(16 * lut.layer(64, 1.0, 2, 16))


def test_card_prediction_adds_the_terms():
    lut = Lut.from_rows(rows(), FP, "executorch", "fp32")
    card = Card("t", 256, 64, 32, (Block(64, 2.0, 2, 2), Block(128, 4.0, 4, 1, False)))
    want = (lut.fixed() + lut.embedding(64, 256) + 2 * lut.layer(64, 2.0, 2, 64)
            + lut.layer(128, 4.0, 4, 64) + lut.projection(64, 128) + lut.projection(128, 64)
            + lut.head(64, 256))
    assert predict_latency(card, lut, 64) == pytest.approx(want)


def test_json_round_trip_and_refusal_on_mismatch(tmp_path):
    lut = Lut.from_rows(rows(), FP, "executorch", "fp32")
    path = lut.save(lut_path(tmp_path / "devices", "host", "executorch", "fp32"))
    back = read_lut(path)
    assert back.layer(192, 3.0, 6, 32) == pytest.approx(lut.layer(192, 3.0, 6, 32))
    back.check(FP, "executorch", "fp32")  # the same device: fine
    other = Fingerprint.from_json(FP.to_json() | {"cpu": "Tensor G2", "device": "pixel7"})
    with pytest.raises(UserError) as e:
        back.check(other, "executorch", "fp32")
    msg = str(e.value)
    assert "cpu: 'cpu' != 'Tensor G2'" in msg and "Tensor G2" in msg and str(path) in msg
    with pytest.raises(UserError, match="quantization: table 'fp32', asked 'int8'"):
        back.check(FP, "executorch", "int8")
    with pytest.raises(UserError, match="runtime: table 'executorch', asked 'onnxruntime'"):
        back.check(FP, "onnxruntime", "fp32")


def test_load_lut_names_the_profile_command_when_missing(tmp_path):
    ws = Workspace.resolve(tmp_path)
    with pytest.raises(UserError, match="merino-mobile profile --device host --runtime "
                                        "executorch --quant int8"):
        load_lut(ws, "host", "executorch", "int8")
    lut = Lut.from_rows(rows(), FP, "executorch", "fp32")
    lut.save(lut_path(ws.devices, "host", "executorch", "fp32"))
    assert load_lut(ws, "host", "executorch", "fp32", verify=False).layer(64, 1.0, 2, 16) > 0
    # the host's table is checked against this machine: FP is a made-up one
    with pytest.raises(UserError, match="cannot predict for host"):
        load_lut(ws, "host", "executorch", "fp32")


@pytest.mark.parametrize("damage", [
    lambda d: "{ not json",
    lambda d: json.dumps(d | {"schema_version": 99}),
    lambda d: json.dumps(d | {"kind": "something else"}),
    lambda d: json.dumps({k: v for k, v in d.items() if k != "fingerprint"}),
    lambda d: json.dumps(d | {"terms": {**d["terms"], "layer": {"decode": [{"width": 64}]}}}),
    lambda d: json.dumps(d | {"terms": {**d["terms"], "head": {"decode": [
        {"width": 64, "vocab": 256, "ms": -1}]}}}),
    lambda d: json.dumps(d | {"terms": {"fixed": d["terms"]["fixed"]}}),
    lambda d: json.dumps(d | {"cache_bytes": "32 MB"}),
])
def test_corrupt_or_hand_edited_table_is_a_schema_error_with_the_path(tmp_path, damage):
    lut = Lut.from_rows(rows(), FP, "executorch", "fp32")
    path = lut.save(tmp_path / "lut.json")
    path.write_text(damage(json.loads(path.read_text())))
    with pytest.raises(UserError, match=f"{path}: not a valid latency table"):
        read_lut(path)


def test_table_of_another_micro_benchmark_version_is_refused(tmp_path):
    lut = Lut.from_rows(rows(), FP, "executorch", "fp32")
    path = lut.save(tmp_path / "lut.json")
    data = json.loads(path.read_text())
    assert data["bench_version"] == BENCH_VERSION
    path.write_text(json.dumps(data | {"bench_version": BENCH_VERSION - 1}))
    with pytest.raises(UserError, match="Profile the device again: merino-mobile profile "
                                        "--device host --runtime executorch --quant fp32"):
        read_lut(path)


def test_disk_full_while_writing_leaves_the_old_table(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes writes fail like a full disk, in a subprocess."""
    lut = Lut.from_rows(rows(), FP, "executorch", "fp32")
    path = lut.save(tmp_path / "lut.json")
    before = path.read_text()
    code = f"""
import resource, signal, sys
from merino_mobile.latency.table import read_lut
from merino_mobile.errors import UserError
lut = read_lut({str(path)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
try:
    lut.save({str(path)!r})
except UserError as e:
    print(e); sys.exit(3)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 3, p.stderr
    assert f"cannot write {path}" in p.stdout and "unchanged" in p.stdout
    assert path.read_text() == before
    assert [f.name for f in tmp_path.iterdir()] == ["lut.json"]  # no temp file left behind


def hot_rows() -> list[Row]:
    """The made-up device of `rows`, with hot twins (`Point.hot`) of every decode term with
    weights, as a replicating device reads them: a third of the streaming time."""
    base = rows()
    null = 0.005
    return base + [replace(r, point=replace(r.point, hot=True),
                           median_ms=null + (r.median_ms - null) / r.per_call / 3, per_call=1)
                   for r in base if r.ok and r.point.term in ("layer", "head", "projection")]


def test_a_model_that_fits_in_the_cache_is_predicted_from_the_hot_twins(tmp_path):
    from merino_mobile.accounting import decode_working_set
    from merino_mobile.latency.predict import COLD_ABOVE, HOT_BELOW, cold_fraction

    lut = Lut.from_rows(hot_rows(), FP, "executorch", "fp32")
    assert lut.has_hot and not Lut.from_rows(rows(), FP, "executorch", "fp32").has_hot
    assert lut.layer(128, 2.0, 4, 64, hot=True) == pytest.approx(lut.layer(128, 2.0, 4, 64) / 3)
    assert lut.head(200, 256, hot=True) == pytest.approx(lut.head(200, 256) / 3)
    card = Card("t", 256, 64, 32, (Block(64, 2.0, 2, 2), Block(128, 4.0, 4, 1, False)))
    ws = decode_working_set(card, 64, "fp32")
    streaming = predict_latency(card, lut, 64, cache_aware=False)
    overhead = lut.fixed() + lut.embedding(64, 256)
    # no cache size known: the streaming sum; a cache twice the working set: all hot
    assert predict_latency(card, lut, 64) == pytest.approx(streaming)
    lut.cache_bytes = ws / HOT_BELOW * 1.01
    assert predict_latency(card, lut, 64) == pytest.approx(overhead + (streaming - overhead) / 3)
    # halfway through the ramp: halfway between; beyond it: streaming
    lut.cache_bytes = ws / ((HOT_BELOW + COLD_ABOVE) / 2)
    assert cold_fraction(ws, lut.cache_bytes) == pytest.approx(0.5)
    assert predict_latency(card, lut, 64) == pytest.approx(
        overhead + (streaming - overhead) * (1 / 3 + 0.5 * 2 / 3))
    lut.cache_bytes = ws / COLD_ABOVE * 0.99
    assert predict_latency(card, lut, 64) == pytest.approx(streaming)
    # prefill is compute-bound: never blended
    lut.cache_bytes = 10 * ws
    assert predict_latency(card, lut, 16, "prefill") == predict_latency(
        card, lut, 16, "prefill", cache_aware=False)
    # the cache size and the hot twins survive the JSON round trip
    back = read_lut(lut.save(tmp_path / "lut.json"))
    assert back.cache_bytes == 10 * ws
    assert back.layer(96, 2.0, 3, 32, hot=True) == pytest.approx(lut.layer(96, 2.0, 3, 32,
                                                                           hot=True))
    # a table without hot twins answers a hot question with the streaming time
    plain = Lut.from_rows(rows(), FP, "executorch", "fp32")
    assert plain.layer(128, 2.0, 4, 64, hot=True) == plain.layer(128, 2.0, 4, 64)


def test_decode_working_set_counts_what_one_token_reads():
    from merino_mobile.accounting import decode_working_set, kv_cache_bytes, matrix_bytes

    card = Card("t", 256, 64, 32, (Block(64, 2.0, 2, 2, True),))
    layer = 4 * matrix_bytes(64, 64, "int8") + 2 * matrix_bytes(128, 64, "int8")
    vectors = 4 * (2 * 64 * 2 + 4 * 64 + 128 + 64 + 2 * 64)  # norms, biases, final norm
    head = matrix_bytes(256, 64, "int8")
    want = layer + head + kv_cache_bytes(card, 100)  # a shared block's weights once
    got = decode_working_set(card, 100, "int8")
    assert want < got <= want + vectors
    untied = replace(card, tied_head=False)
    assert decode_working_set(untied, 100, "int8") == got  # the head, tied or not, read once


def test_a_point_read_below_one_that_does_less_work_takes_the_envelope():
    """A shared machine's fast windows make single points read far too low (table.monotone):
    a layer never costs less than a narrower one or one of a smaller FFN ratio at its context,
    a head never less than a narrower one. Points that keep that order are exact as before."""
    low = {("layer", 256, 2.0, 64): 0.3, ("head", 128): 0.2}

    def damaged() -> list[Row]:
        out = []
        for r in rows():
            p = r.point
            f = low.get(("layer", p.width, p.ffn_ratio, p.context) if p.term == "layer"
                        else (p.term, p.width), 1.0)
            out.append(replace(r, median_ms=r.median_ms * f) if r.median_ms else r)
        return out

    clean = Lut.from_rows(rows(), FP, "executorch", "fp32")
    lut = Lut.from_rows(damaged(), FP, "executorch", "fp32")
    # the low cell is lifted to the most a cell of less work reads: 256 wide at FFN 1, or
    # 128 wide at FFN 2 (here the former, the wider)
    assert lut.layer(256, 2.0, 8, 64) == pytest.approx(cost(256, 1.0, 64), rel=1e-9)
    assert lut.layer(256, 2.0, 8, 64) > 2 * 0.3 * cost(256, 2.0, 64)
    # the table file keeps the reading as measured; only the surfaces use the envelope
    stored = {(e["width"], e["ffn_ratio"], e["context"]): e["ms"]
              for e in lut.to_json()["terms"]["layer"]["decode"]}
    assert stored[256, 2.0, 64] < 0.35 * cost(256, 2.0, 64)
    # the head: 128 wide read below 64 wide, so it takes 64's
    assert lut.head(128, 256) == pytest.approx(clean.head(64, 256), rel=1e-9)
    # every cell that kept the order is untouched, at the other context too
    for w in WIDTHS:
        for r in RATIOS:
            for c in CONTEXTS:
                if (w, r, c) != (256, 2.0, 64):
                    assert lut.layer(w, r, w // 32, c) == pytest.approx(cost(w, r, c), rel=1e-9)
