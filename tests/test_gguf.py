"""GGUF / llama.cpp, the fourth runtime: real GGUF exports of a tiny Llama-style card, verified
and benched through the real llama.cpp (llama-cpp-python), and the cards it refuses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cli_runner import run  # tests/cli_runner.py (pytest puts tests/ on sys.path)

from merino_mobile.card import Block, Card
from merino_mobile.deploy.bench import bench_artifact
from merino_mobile.deploy.deploy import plan
from merino_mobile.device import host as host_backend
from merino_mobile.device import open_device
from merino_mobile.device.checklist import first_missing
from merino_mobile.device.profiles import read_profile
from merino_mobile.errors import UserError
from merino_mobile.export import export
from merino_mobile.export import gguf as g
from merino_mobile.formats import (
    PROFILED_RUNTIMES,
    check_pair,
    check_runtime_quant,
    for_artifact,
    for_runtime,
    get_format,
)
from merino_mobile.model import build_decoder
from merino_mobile.workspace import Workspace

# vocab 256, width 64, 2 layers, 4 heads sharing 2 K/V heads: SmolLM2's layout, tiny
TINY = Card("tiny-llama", vocab=256, context=96, head_dim=16, positions="rope",
            rope_theta=100000.0, norm="rmsnorm", bias=False,
            blocks=(Block(64, 2.0, 4, 2, ffn="swiglu", kv_heads=2),))
QUANTS = ("fp16", "int8", "int4")
CACHE = 48


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, object]:
    """One export per quantization, shared by every test here."""
    root = tmp_path_factory.mktemp("gguf")
    return {q: export(TINY, "gguf", q, root / q, cache_len=CACHE) for q in QUANTS}


def test_the_format_row():
    f = get_format("gguf")
    assert (f.runtime, f.quants, f.artifact) == ("llamacpp", ("fp16", "int8", "int4", "q4_k_m"),
                                                 "model.gguf")
    assert for_runtime("llamacpp") is f and for_artifact(Path("x/model.gguf")) is f
    assert set(f.toolchain()) == {"torch", "gguf", "llama-cpp-python"}
    export_fn, verify_fn = f.functions()
    assert export_fn is g.export_gguf and verify_fn is g.verify_gguf
    assert "llamacpp" not in PROFILED_RUNTIMES  # no micro-benchmarks: bench only
    assert "llamacpp" in host_backend.RUNTIMES
    with pytest.raises(UserError, match="gguf does not support quantization 'fp32'"):
        check_pair("gguf", "fp32")
    with pytest.raises(UserError, match="unknown runtime 'llamacpp'; choose one of executorch"):
        check_runtime_quant("llamacpp", "int8", profiled=True)


@pytest.mark.slow
@pytest.mark.parametrize("quant", QUANTS)
def test_export_matches_torch_through_llama_cpp(exports, quant):
    r = exports[quant]
    v = r.verification
    assert v["checked"] == "structure and prediction" and v["runtime"].startswith("llama.cpp")
    assert v["passed"] is True and v["problems"] == [] and v["finite"]
    assert v["steps"] > 10 and v["greedy_agreement"] >= 0.9
    assert v["cosine_min"] >= {"fp16": 0.9999, "int8": 0.999, "int4": 0.98}[quant]
    if quant == "fp16":
        assert v["max_rel_err"] <= 1e-2
    # 15 matrices (7 per layer and the tied embedding), 5 RMSNorm weights
    types = v["tensor_types"]
    assert types["F32"] == 5 and sum(types.values()) == 20
    main = {"fp16": "F16", "int8": "Q8_0", "int4": "Q4_0"}[quant]
    assert types[main] >= 14, types
    header = g.read_header(r.artifact)
    assert header["general.architecture"] == "llama"
    assert header["llama.attention.head_count_kv"] == 2 and header["llama.block_count"] == 2
    assert header["llama.rope.freq_base"] == 100000.0
    assert header["merino.card"] == "tiny-llama" and header["merino.cache_len"] == str(CACHE)
    assert header["merino.card_sha256"] == g.card_sha256(TINY)
    assert json.loads((r.artifact.parent / "export.json").read_text())["format"] == "gguf"


@pytest.mark.slow
def test_smaller_bits_are_smaller_files(exports):
    sizes = [exports[q].size_bytes for q in QUANTS]
    assert sizes[0] > sizes[1] > sizes[2] > 0


@pytest.mark.slow
def test_the_byte_vocabulary_tokenizes_text_in_llama_cpp(exports):
    llm = g.load_llama(exports["int8"].artifact, threads=1)
    try:
        assert llm.n_vocab() == 256
        assert llm.tokenize("héllo".encode(), add_bos=False) == list("héllo".encode())
        assert llm.detokenize([104, 105]) == b"hi"
    finally:
        llm.close()


@pytest.mark.slow
def test_bench_through_llama_cpp(monkeypatch, capsys, tmp_path, exports):
    ws = Workspace.resolve(tmp_path)
    for quant in ("fp16", "int4"):
        artifact = exports[quant].artifact
        r = bench_artifact(ws, artifact, "host", prompt=16, generate=8, repeat=3)
        assert r.runtime == "llamacpp" and r.quant == quant and r.card == "tiny-llama"
        assert r.cache_len == CACHE and r.size_bytes == artifact.stat().st_size
        assert r.load_ms > 0 and r.peak_rss_bytes > 10e6
        for s in (r.ttft_ms, r.prefill_tokens_per_s, r.decode_ms_per_token,
                  r.decode_tokens_per_s):
            assert s.n == 3 and 0 < s.p10 <= s.median <= s.p90
        assert sorted(r.decode_positions) == [16, 23]
        assert r.fingerprint["runtime_version"] == g.llama_cpp_version()
    code, out, err = run(monkeypatch, capsys, "bench", str(exports["int8"].artifact),
                         "--prompt", "8", "--generate", "4", "--repeat", "2", "--workspace",
                         str(tmp_path), "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["runtime"] == "llamacpp" and r["decode_tokens_per_s"]["median"] > 0


def test_cards_llama_cpp_cannot_represent_are_refused(monkeypatch, capsys, tmp_path):
    b = TINY.blocks[0]
    cases = {
        "positions": (replace(TINY, positions="learned", rope_theta=10000.0), "\"rope\""),
        "norm": (replace(TINY, norm="layernorm"), "\"rmsnorm\""),
        "ffn": (replace(TINY, blocks=(replace(b, ffn="gelu"),)), "\"swiglu\""),
        "shared": (replace(TINY, blocks=(replace(b, shared=True),)), "\"shared\": false"),
        "widths": (replace(TINY, blocks=(b, Block(128, 2.0, 8, 1, ffn="swiglu"))),
                   "one block of width 128"),
        "projection": (replace(TINY, embed_width=32), "\"embed_width\": null"),
        "final norm": (replace(TINY, final_norm=False), "\"final_norm\": true"),
        "vocab": (replace(TINY, vocab=128), "\"vocab\": 256"),
    }
    for what, (card, nearest) in cases.items():
        with pytest.raises(UserError, match="cannot be exported as GGUF") as e:
            g.check_card(card)
        assert "nearest supported: " in str(e.value) and nearest in str(e.value), what
        assert "\n" not in str(e.value)
    assert g.gguf_problems(TINY) == []
    # biases and an untied head are fine
    assert g.gguf_problems(replace(TINY, qkv_bias=True, tied_head=False)) == []
    # the CLI: one line, exit code 2, for a shipped OPT card (LayerNorm, GELU-free ReLU, learned)
    code, out, err = run(monkeypatch, capsys, "export", "opt-125m", "--format", "gguf",
                         "--quant", "int8", "--workspace", str(tmp_path), "--out",
                         str(tmp_path / "o"))
    assert code == 2 and "cannot be exported as GGUF" in err and "\"rmsnorm\"" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_gguf_beside_another_card_is_refused(tmp_path, exports):
    folder = tmp_path / "other"
    shutil.copytree(exports["int4"].artifact.parent, folder)
    other = replace(TINY, name="tiny-other", rope_theta=10000.0)
    (folder / "card.json").write_text(json.dumps(other.to_json()))
    ws = Workspace.resolve(tmp_path)
    with pytest.raises(UserError, match="holds card 'tiny-llama', not the card 'tiny-other'"):
        bench_artifact(ws, folder / "model.gguf", "host", prompt=4, generate=2, repeat=1)
    junk = tmp_path / "junk" / "model.gguf"
    junk.parent.mkdir()
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(UserError, match="is not a GGUF file"):
        bench_artifact(ws, junk, "host", prompt=4, generate=2, repeat=1)


@pytest.mark.slow
def test_a_file_another_llama_cpp_wrote_names_both_versions(tmp_path, monkeypatch):
    """A GGUF this llama.cpp cannot load (here: a key it requires is missing, as a format change
    would do) that another llama-cpp-python wrote: the error names both versions."""
    model = build_decoder(TINY, cache_len=CACHE)
    versions = g.package_versions

    def old(pkgs):
        return versions(pkgs) | ({"llama-cpp-python": "0.0.1"} if "llama-cpp-python" in pkgs
                                 else {})

    monkeypatch.setattr(g, "package_versions", old)
    monkeypatch.setattr("gguf.GGUFWriter.add_block_count", lambda self, n: None)
    folder = tmp_path / "old"
    folder.mkdir()
    g.write_gguf(model, folder / "model.gguf", "fp16", quantizer="none")
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"llama-cpp-python 0\.0\.1 and this is "
                                        + g.llama_cpp_version().replace(".", r"\.")) as e:
        g.load_llama(folder / "model.gguf", threads=1)
    assert "block_count" in str(e.value) and "\n" not in str(e.value)
    # the same through bench: the worker's one line reaches the user
    ws = Workspace.resolve(tmp_path)
    with pytest.raises(UserError, match="written with llama-cpp-python 0.0.1"):
        bench_artifact(ws, folder / "model.gguf", "host", prompt=4, generate=2, repeat=1)


@pytest.mark.slow
def test_without_llama_cpp(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` fails
    with pytest.raises(UserError, match=r"pip install llama-cpp-python \(it compiles"):
        g.llama_cpp()
    # export still writes the file, quantized by the gguf package, and checks its structure
    r = export(TINY, "gguf", "int4", tmp_path / "int4", cache_len=CACHE)
    v = r.verification
    assert v["checked"] == "structure" and v["passed"] is True
    assert "skipped: llama.cpp is not installed: pip install llama-cpp-python" in \
        v["prediction_parity"]
    assert v["tensor_types"] == {"F32": 5, "Q4_0": 14, "Q8_0": 1}  # the tied head at Q8_0
    with pytest.raises(UserError, match="q4_k_m needs llama.cpp's quantizer"):
        export(TINY, "gguf", "q4_k_m", tmp_path / "k", cache_len=CACHE)
    monkeypatch.undo()
    # that file runs in the real llama.cpp and matches torch
    v = g.verify_gguf(build_decoder(TINY, cache_len=CACHE), r.artifact, "int4")
    assert v["passed"] is True and v["cosine_min"] >= 0.98
    # the host says how to install it when its profile lists it
    monkeypatch.setattr(host_backend, "runtime_version",
                        lambda rt: None if rt == "llamacpp" else "1.0")
    prof = read_profile(Path(host_backend.__file__).parents[1] / "data" / "devices" / "host.toml")
    assert "llamacpp" in prof.runtimes
    gap = first_missing(host_backend.readiness(prof, "llamacpp"))
    assert "llama-cpp-python is not installed" in gap.line()
    assert "pip install llama-cpp-python (it compiles llama.cpp" in gap.line()
    with pytest.raises(UserError, match="pip install llama-cpp-python"):
        open_device(prof, "llamacpp")


def test_format_auto_includes_llama_cpp(tmp_path):
    ws = Workspace.resolve(tmp_path)
    _, tries = plan(ws, [TINY], "host", "auto", "auto", 16, 8)
    assert {(t.format.name, t.quant) for t in tries if t.runtime == "llamacpp"} == {
        ("gguf", "int8"), ("gguf", "int4")}
    assert tries[0].format.name == "executorch"  # the device's first runtime stays first


def test_the_extra_buffer_probe_says_what_a_child_run_shows(tmp_path):
    # where llama.cpp's AMX kernels fault (a VM that advertises AMX), the probe must say so and
    # loads go without extra buffer types; elsewhere it must leave them on
    child = subprocess.run([sys.executable, "-c", g.EXTRA_BUFFERS_PROBE, str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0 or child.returncode < 0, child.stderr[-2000:]
    assert g.extra_buffers_work() == (child.returncode == 0)
    if not g._cpu_has_amx():
        assert g.extra_buffers_work()
