"""`merino-mobile bench`: real ExecuTorch and ONNX Runtime artifacts timed on this host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import run  # tests/cli_runner.py (pytest puts tests/ on sys.path)

from merino_mobile.card import Block, Card
from merino_mobile.deploy.bench import decode_positions, explain_failure, llama_bench_rows
from merino_mobile.device.base import MethodResult, percentile
from merino_mobile.export import export

TINY = Card(name="tiny-bench", vocab=256, context=32, head_dim=16, blocks=(Block(64, 2.0, 4, 2),))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    return {fmt: export(TINY, fmt, "int8", root / fmt, verify=False).artifact
            for fmt in ("executorch", "onnx")}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["executorch", "onnx"])
def test_bench_json_has_every_number(monkeypatch, capsys, tmp_path, artifacts, fmt):
    code, out, err = run(monkeypatch, capsys, "bench", str(artifacts[fmt]), "--device", "host",
                         "--prompt", "8", "--generate", "12", "--repeat", "3", "--workspace",
                         str(tmp_path), "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["schema_version"] == 1
    assert r["runtime"] == {"executorch": "executorch", "onnx": "onnxruntime"}[fmt]
    assert (r["prompt"], r["generate"], r["repeat"]) == (8, 12, 3)
    assert r["card"] == "tiny-bench" and r["quant"] == "int8" and r["cache_len"] == 32
    assert r["params"] > 0 and r["size_bytes"] == artifacts[fmt].stat().st_size
    assert r["load_ms"] > 0 and r["peak_rss_bytes"] > 10e6  # a Python process holding a runtime
    for key in ("ttft_ms", "prefill_tokens_per_s", "decode_ms_per_token", "decode_tokens_per_s"):
        s = r[key]
        assert s["n"] == 3 and 0 < s["p10"] <= s["median"] <= s["p90"], (key, s)
    # rates are the inverse of the times of the same runs
    assert r["prefill_tokens_per_s"]["median"] == pytest.approx(
        8000 / r["ttft_ms"]["median"], rel=1e-6)
    assert r["decode_tokens_per_s"]["median"] == pytest.approx(
        1000 / r["decode_ms_per_token"]["median"], rel=1e-6)
    # decode was timed at the real first and last positions of the generation
    assert sorted(map(int, r["decode_positions"])) == [8, 19]
    assert r["fingerprint"]["runtime"] == r["runtime"] and r["threads"] >= 1


@pytest.mark.slow
def test_bench_prints_a_llama_bench_table(monkeypatch, capsys, tmp_path, artifacts):
    code, out, err = run(monkeypatch, capsys, "bench", str(artifacts["onnx"]), "--prompt", "4",
                         "--generate", "4", "--repeat", "2", "--workspace", str(tmp_path))
    assert code == 0, err
    for word in ("model", "size", "params", "runtime", "threads", "test", "t/s", "pp4", "tg4",
                 "tiny-bench", "time to first token", "peak RSS"):
        assert word in out, word


@pytest.mark.slow
def test_bench_refuses_what_cannot_run(monkeypatch, capsys, tmp_path, artifacts):
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "ortonly.toml").write_text(
        'name = "ortonly"\ntransport = "local"\nruntimes = ["onnxruntime"]\n')
    code, _, err = run(monkeypatch, capsys, "bench", str(artifacts["executorch"]), "--device",
                       "ortonly", "--prompt", "8", "--generate", "8", "--workspace",
                       str(tmp_path))
    assert code == 2 and "cannot run executorch" in err and "it has onnxruntime" in err

    code, _, err = run(monkeypatch, capsys, "bench", str(artifacts["executorch"]), "--prompt",
                       "30", "--generate", "8", "--workspace", str(tmp_path))
    assert code == 2 and "KV cache of 32 positions" in err and "--cache-len 38" in err

    junk = tmp_path / "model.bin"
    junk.write_bytes(b"x")
    code, _, err = run(monkeypatch, capsys, "bench", str(junk), "--workspace", str(tmp_path))
    assert code == 2 and "unknown artifact type" in err

    code, _, err = run(monkeypatch, capsys, "bench", str(tmp_path / "gone.pte"), "--workspace",
                       str(tmp_path))
    assert code == 2 and "no such file" in err


def test_a_killed_runtime_is_reported_as_out_of_memory():
    killed = MethodResult("forward", (), "runtime worker killed by SIGKILL while running forward")
    assert "out of memory?" in str(explain_failure(killed, "pixel7", "prefill"))
    alloc = MethodResult("forward", (), "RuntimeError: failed to allocate memory for the cache")
    assert "out of memory?" in str(explain_failure(alloc, "host", "decode"))
    other = MethodResult("forward", (), "ValueError: no method 'forward'")
    assert "out of memory" not in str(explain_failure(other, "host", "decode"))
    assert "runner build" not in str(explain_failure(other, "host", "decode"))


def test_a_runner_without_the_llm_kernels_is_told_to_rebuild():
    """What executor_runner prints when a program's op has no kernel linked in."""
    missing = MethodResult("forward", (), "Missing operator: [2] llama::custom_sdpa.out; "
                                          "Loading method forward failed with status 0x14")
    line = str(explain_failure(missing, "pixel7", "decode at position 128"))
    assert "lacks a kernel" in line and "`merino-mobile runner build`" in line


def test_decode_positions_are_real_and_span_the_generation():
    assert decode_positions(128, 128) == [128, 255]
    assert decode_positions(8, 1) == [8]
    assert decode_positions(1, 2) == [1, 2]


def test_llama_bench_rows_without_a_card():
    from merino_mobile.deploy.bench import BenchReport, Stat

    s = Stat(10.0, 9.0, 11.0, 3)
    r = BenchReport("x/model.pte", "host", "executorch", {}, 16, 32, 3, 2, 1000, s, s, s, s, {})
    rows = llama_bench_rows([r])
    assert [row["test"] for row in rows] == ["pp16", "tg32"] and rows[0]["params"] == "?"
    assert rows[0]["model"] == "model.pte" and rows[1]["t/s"] == "10.00 [9.00, 11.00]"
    assert BenchReport.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_rounds_alternate_their_order_and_pool_every_run():
    from merino_mobile.deploy.bench import BenchReport, Stat, round_order

    assert [round_order(3, r) for r in range(3)] == [[0, 1, 2], [2, 1, 0], [0, 1, 2]]
    s = Stat(0.0, 0.0, 0.0, 0)

    def part(ttft: list[float], decode: list[float], pos: dict[int, float]) -> BenchReport:
        return BenchReport("m.pte", "host", "executorch", {}, 10, 4, len(ttft), 2, 1000, s, s, s,
                           s, pos, load_ms=5.0, peak_rss_bytes=100, ttft_samples_ms=ttft,
                           decode_samples_ms=decode, raw={"prefill": len(ttft)})

    pooled = BenchReport.pooled([part([10.0, 20.0], [1.0, 2.0], {10: 1.0, 13: 2.0}),
                                 part([30.0, 40.0], [3.0, 4.0], {10: 3.0, 13: 4.0}),
                                 part([50.0, 60.0], [5.0, 6.0], {10: 5.0, 13: 6.0})])
    assert pooled.rounds == 3 and pooled.repeat == 6 and pooled.ttft_ms.n == 6
    assert pooled.ttft_ms.median == 35.0 and pooled.decode_ms_per_token.median == 3.5
    assert pooled.prefill_tokens_per_s.median == percentile([10000 / t for t in
                                                             (10, 20, 30, 40, 50, 60)], 50)
    assert pooled.decode_positions == {10: 3.0, 13: 4.0}
    assert sorted(pooled.raw) == ["round 1", "round 2", "round 3"]
    assert BenchReport.from_json(json.loads(json.dumps(pooled.to_json()))) == pooled
    other = part([1.0], [1.0], {10: 1.0, 13: 1.0})
    other.prompt = 20
    with pytest.raises(ValueError, match="cannot be pooled"):
        BenchReport.pooled([pooled, other])
