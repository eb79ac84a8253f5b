"""`generate` and `eval`: real text and perplexity from exported artifacts of a model trained here
(real training, real ExecuTorch, ONNX Runtime and llama.cpp), checked against the torch model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from merino_mobile.card import Block, Card
from merino_mobile.corpus import encode, load_split, split_documents
from merino_mobile.deploy.text import evaluate_text, generate_text
from merino_mobile.errors import UserError
from merino_mobile.export import export
from merino_mobile.model import build_decoder
from merino_mobile.model import generate as torch_generate
from merino_mobile.tokenizer import Tokenizer
from merino_mobile.train import TrainConfig, train
from merino_mobile.workspace import Workspace

TEXT = ("The quick brown fox jumps over the lazy dog. A small model learns to repeat it. "
        "Every line of this corpus says the same few things in the same few words.\n")
# Llama-style, so the same checkpoint goes to llama.cpp as well
CARD = Card("tiny-text", vocab=256, context=64, head_dim=16, positions="rope",
            rope_theta=10000.0, norm="rmsnorm", bias=False,
            blocks=(Block(64, 2.0, 4, 2, ffn="swiglu", kv_heads=2),))
CACHE = 48
PROMPT = "The quick brown"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint trained on repeated text, and its executorch fp32/int8, onnx and gguf
    exports (each with the checkpoint's folder's tokenizer: none here, bytes)."""
    root = tmp_path_factory.mktemp("text")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT * 80)
    torch.set_num_threads(1)
    data = load_split(corpus, Tokenizer())
    res = train(CARD, data, TrainConfig(tokens=200 * 8 * 32, seq=32, batch=8, lr=1e-2,
                                        checkpoint_every=1000, eval_tokens=256), out=root / "run")
    ckpt = Path(res.checkpoint)
    arts = {}
    for fmt, quant in (("executorch", "fp32"), ("executorch", "int8"), ("onnx", "fp32"),
                       ("gguf", "fp16")):
        r = export(CARD, fmt, quant, root / f"{fmt}-{quant}", checkpoint=ckpt, cache_len=CACHE,
                   verify=False)
        arts[(fmt, quant)] = r.artifact
    ws_root = root / "ws"
    ws_root.mkdir()
    return Workspace.resolve(ws_root), corpus, ckpt, arts, res


def reference_nll(model, ids: list[int], window: int, max_tokens: int) -> tuple[float, int]:
    """The eval procedure with the torch model: windows of the cache, one step per token."""
    nll, n = 0.0, 0
    for w0 in range(0, len(ids) - 1, window):
        chunk = ids[w0:w0 + window]
        if len(chunk) < 2 or n >= max_tokens:
            break
        model.reset_cache()
        logits = model(torch.tensor([[chunk[0]]]), torch.tensor([0]))[0]
        for pos in range(1, len(chunk)):
            nll -= float(torch.log_softmax(logits.double(), -1)[chunk[pos]])
            n += 1
            if n >= max_tokens or pos == len(chunk) - 1:
                break
            logits = model(torch.tensor([[chunk[pos]]]), torch.tensor([pos]))[0]
    return nll / n, n


@torch.no_grad()
def test_generate_gives_the_torch_model_s_greedy_text_on_every_runtime(trained):
    ws, _, ckpt, arts, _ = trained
    model = build_decoder(CARD, cache_len=CACHE, checkpoint=ckpt)
    want = torch_generate(model, list(PROMPT.encode()), 12)
    for (fmt, quant), art in arts.items():
        g = generate_text(ws, art, PROMPT, new_tokens=12)
        assert g.prompt_tokens == len(PROMPT) and g.new_tokens == 12
        assert g.ttft_ms > 0 and g.decode_tokens_per_s and g.decode_tokens_per_s > 0
        if quant == "fp32":
            assert g.tokens == want, fmt
        else:  # a quantized model may choose otherwise somewhere; mostly it agrees
            assert sum(a == b for a, b in zip(g.tokens, want, strict=True)) >= 8, fmt
        assert g.text == bytes(g.tokens).decode("utf-8", errors="replace")
    # the trained model continues the text it learned
    fp32 = generate_text(ws, arts[("executorch", "fp32")], PROMPT, new_tokens=12)
    assert fp32.text.startswith(" fox jumps")


def test_executorch_s_own_llm_runner_generates_the_same_text(trained):
    """TextLLMRunner (what llama_main and ExecuTorch's Android demo app run) loads the .pte
    from its metadata and the tokenizer.json the export wrote, and decodes greedily what the
    torch model does; its own statistics come back beside."""
    ws, _, ckpt, arts, _ = trained
    art = arts[("executorch", "fp32")]
    assert json.loads((art.parent / "export.json").read_text())["tokenizer"] == "tokenizer.json"
    model = build_decoder(CARD, cache_len=CACHE, checkpoint=ckpt)
    want = torch_generate(model, list(PROMPT.encode()), 12)
    g = generate_text(ws, art, PROMPT, new_tokens=12, llm_runner=True)
    assert g.runtime == "executorch (TextLLMRunner)"
    assert g.tokens == want and g.text == bytes(want).decode("utf-8", errors="replace")
    assert g.prompt_tokens == len(PROMPT) and g.new_tokens == 12
    assert g.runner_stats["generated_tokens"] == 11  # its count leaves out the prefill's token
    assert g.runner_stats["prompt_tokens"] == len(PROMPT)
    with pytest.raises(UserError, match="generates greedily"):
        generate_text(ws, art, PROMPT, new_tokens=4, llm_runner=True, top_k=3)
    with pytest.raises(UserError, match="runs ExecuTorch programs"):
        generate_text(ws, arts[("onnx", "fp32")], PROMPT, new_tokens=4, llm_runner=True)


def test_the_byte_tokenizer_file_encodes_as_the_byte_tokenizer(tmp_path):
    """The tokenizer.json written beside byte-tokenized ExecuTorch exports is the byte
    tokenizer: the same ids for any text (non-ASCII and control bytes included), and back."""
    from merino_mobile.tokenizer import byte_tokenizer_json

    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(byte_tokenizer_json()))
    as_file, as_bytes = Tokenizer(path), Tokenizer()
    text = "Grüße, 世界!\n\t\x00\x7f tabs\tand  spaces " + "".join(map(chr, range(32, 256)))
    assert as_file.vocab == 256
    assert as_file.encode(text) == as_bytes.encode(text)
    assert as_file.decode(as_bytes.encode(text)) == text


@torch.no_grad()
def test_eval_perplexity_equals_the_torch_model_s_and_shows_what_int8_costs(trained):
    ws, corpus, ckpt, arts, res = trained
    model = build_decoder(CARD, cache_len=CACHE, checkpoint=ckpt)
    _, held = split_documents(corpus)
    ids = encode(Tokenizer(), held).tolist()
    want, n = reference_nll(model, ids, CACHE, 300)
    got = {k: evaluate_text(ws, a, corpus, max_tokens=300) for k, a in arts.items()}
    fp32 = got[("executorch", "fp32")]
    assert fp32.tokens_scored == n == 300 and fp32.windows == math.ceil(300 / (CACHE - 1))
    assert fp32.nll_per_token == pytest.approx(want, rel=1e-4)
    assert got[("onnx", "fp32")].nll_per_token == pytest.approx(want, rel=1e-4)
    assert got[("gguf", "fp16")].nll_per_token == pytest.approx(want, rel=2e-2)
    assert fp32.perplexity == pytest.approx(math.exp(want))
    # trained on this very text: far better than a uniform guess over 256 bytes
    assert fp32.perplexity < 20 < 256
    int8 = got[("executorch", "int8")]
    assert int8.quant == "int8" and abs(int8.nll_per_token - want) / want < 0.1


def test_the_checkpoint_s_tokenizer_travels_with_the_export(trained, tmp_path):
    ws, corpus, ckpt, _, _ = trained
    from merino_mobile.corpus import train_bpe

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(ckpt.read_bytes())
    train_bpe(corpus, 300, run / "tokenizer.json")  # more ids than the card has
    # GGUF: the cheapest export (no lowering); the copy is the same for every format
    r = export(CARD, "gguf", "fp16", tmp_path / "e", checkpoint=run / "model.safetensors",
               cache_len=CACHE, verify=False)
    assert (r.artifact.parent / "tokenizer.json").is_file()
    assert json.loads((r.artifact.parent / "export.json").read_text())["tokenizer"] == \
        "tokenizer.json"
    with pytest.raises(UserError, match="has 300 ids, more than tiny-text's vocabulary of 256"):
        generate_text(ws, r.artifact, PROMPT)


def test_cli_generate_and_eval_json_and_refusals(trained, run, tmp_path):
    ws, corpus, _, arts, _ = trained
    art = str(arts[("executorch", "fp32")])
    g = json.loads(run(ws.root, "generate", art, "--prompt", PROMPT, "--tokens", "5",
                       "--json").stdout)
    assert set(g) >= {"text", "tokens", "ttft_ms", "decode_tokens_per_s", "runtime"}
    assert len(g["tokens"]) == 5 and g["runtime"] == "executorch"
    r = json.loads(run(ws.root, "generate", art, "--prompt", PROMPT, "--tokens", "5",
                       "--llm-runner", "--json").stdout)
    assert r["tokens"] == g["tokens"] and r["runner_stats"]["prompt_tokens"] == len(PROMPT)
    b = json.loads(run(ws.root, "bench", art, "--prompt", "8", "--generate", "4", "--repeat", "1",
                       "--llm-runner", "--json").stdout)
    assert b["llm_runner"]["prompt_tokens"] == 8 and b["llm_runner"]["new_tokens"] == 4
    assert b["llm_runner"]["stats"]["generated_tokens"] == 3 and b["decode_tokens_per_s"]
    e = json.loads(run(ws.root, "eval", art, "--corpus", str(corpus), "--tokens", "50",
                       "--json").stdout)
    assert e["tokens_scored"] == 50 and e["perplexity"] > 1
    (ws.root / "devices").mkdir(exist_ok=True)
    (ws.root / "devices" / "pixel7.toml").write_text(
        'transport = "adb"\n[adb]\naddress = "127.0.0.1:1"\n')
    cases = [
        (("generate", art, "--prompt", "x", "--device", "pixel7"), "reached over adb"),
        (("generate", art, "--prompt", "x" * 60), "do not fit the artifact's KV cache of 48"),
        (("generate", art, "--prompt", "x" * 60, "--llm-runner"),
         "do not fit the artifact's KV cache of 48"),
        (("bench", str(arts[("onnx", "fp32")]), "--llm-runner"), "give a model.pte"),
        (("generate", art, "--prompt", ""), "the prompt is empty"),
        (("generate", art, "--prompt", "x", "--tokens", "0"), "--tokens must be at least 1"),
        (("eval", art, "--corpus", str(tmp_path / "none.txt")), "no corpus at"),
        (("generate", str(tmp_path / "model.pte"), "--prompt", "x"), "no such file"),
    ]
    for args, fragment in cases:
        r = run(ws.root, *args, ok=False)
        assert r.returncode == 2 and fragment in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


@torch.no_grad()
def test_deploy_with_a_checkpoint_and_corpus_reports_what_quantization_costs(trained, run):
    from merino_mobile.deploy import deploy

    ws, corpus, ckpt, _, _ = trained
    # ONNX int8: a quantized export that lowers in seconds
    done = deploy(ws, CARD, "host", "onnx", "int8", prompt=8, generate=8, repeat=2,
                  force=True, predict_latency=False, checkpoint=ckpt, corpus=corpus,
                  eval_tokens=120)
    ppl = done.report["perplexity"]
    model = build_decoder(CARD, cache_len=16, checkpoint=ckpt)
    _, held = split_documents(corpus)
    want, n = reference_nll(model, encode(Tokenizer(), held).tolist(), 16, 120)
    assert ppl["tokens_scored"] == n == 120 and ppl["runtime"] == "onnxruntime"
    assert ppl["fp32_nll_per_token"] == pytest.approx(want, rel=1e-6)
    assert ppl["perplexity_increase_pct"] == pytest.approx(
        100 * (math.exp(ppl["nll_per_token"] - want) - 1))
    assert abs(ppl["perplexity_increase_pct"]) < 20
    assert done.report["checkpoint"] == str(ckpt)
    md = (Path(done.report["out_dir"]) / "report.md").read_text()
    assert "## Quality" in md and f"{ppl['fp32_perplexity']:.3f}" in md
    bad = run(ws.root, "deploy", "opt-125m", "--corpus", str(corpus), ok=False)
    assert bad.returncode == 2 and "give --checkpoint too" in bad.stderr
