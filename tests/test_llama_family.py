"""The Llama-style decoders: card version 2, its accounting against transformers, the torch decoder
and its exports for every new kind, and `merino-mobile import` of Hugging Face folders.

Nothing is downloaded: transformers builds the reference models on the meta device (counts) or as
tiny random models saved with `save_pretrained` (imports), and the imported decoder's logits are
compared with transformers' own on the same tokens.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from cli_runner import run  # tests/cli_runner.py (pytest puts tests/ on sys.path)
from safetensors.torch import load_file, save_file

from merino_mobile import accounting as acc
from merino_mobile.card import V1_BLOCK_KEYS, V1_KEYS, Block, Card, load_card, save_card
from merino_mobile.errors import UserError
from merino_mobile.hf_import import import_folder
from merino_mobile.model import Decoder, build_decoder
from merino_mobile.workspace import BUILTIN, Workspace

# -- cards ---------------------------------------------------------------------------------------

# Qwen2-style: RMSNorm, rope with its own theta, q/k/v biases only; a shared SwiGLU block with
# grouped-query attention (4 heads, 2 K/V heads) and an explicit hidden size, then a multi-query
# ReLU block
LLAMA = Card("tiny-llama", vocab=256, context=48, head_dim=16, positions="rope", rope_theta=5e5,
             norm="rmsnorm", norm_eps=1e-6, bias=False, qkv_bias=True,
             blocks=(Block(64, 2.5, 4, 2, shared=True, ffn="swiglu", kv_heads=2, hidden=160),
                     Block(64, 2.0, 4, 1, ffn="relu", kv_heads=1)))
# GPT-2/OPT-style with the other new pieces: tanh GELU, GQA, no bias on o, learned positions with
# an offset, a narrower embedding and an untied head
GPTISH = Card("tiny-gptish", vocab=256, context=48, head_dim=16, pos_offset=2, embed_width=32,
              tied_head=False, norm_eps=1e-6, out_bias=False,
              blocks=(Block(64, 2.0, 4, 2, ffn="gelu_tanh", kv_heads=2),))

V2 = {  # a version 2 card as JSON, for the refusals
    "schema_version": 2, "name": "v2", "vocab": 256, "context": 64, "head_dim": 16,
    "positions": "rope", "rope_theta": 100000.0, "embed_width": None, "tied_head": True,
    "norm": "rmsnorm", "norm_eps": 1e-5, "final_norm": True, "bias": False,
    "blocks": [{"width": 64, "ffn_hidden": 160, "heads": 4, "kv_heads": 2, "depth": 2,
                "shared": False, "ffn": "swiglu"}], "meta": {}}


def edited(base: dict, **changes) -> dict:
    """A copy of `base`; "block_KEY" reaches into the first block, None removes the key."""
    d = json.loads(json.dumps(base))
    for key, value in changes.items():
        target, k = (d["blocks"][0], key[6:]) if key.startswith("block_") else (d, key)
        if value is None:
            target.pop(k, None)
        else:
            target[k] = value
    return d


def test_v2_cards_round_trip_exactly(tmp_path):
    for card in (LLAMA, GPTISH):
        assert card.schema_version == 2
        again = load_card(save_card(card, tmp_path / f"{card.name}.json"))
        assert again == card and again.to_json() == card.to_json()
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(V2))
    card = load_card(path)
    assert card.to_json() == V2  # read exactly as written, written back the same
    b = card.blocks[0]
    assert (b.ffn_hidden, b.n_kv_heads, b.kv_width, b.ffn_ratio) == (160, 2, 32, 2.5)
    assert (card.has_qkv_bias, card.has_out_bias) == (False, False)


def test_v1_cards_are_read_and_written_as_before(tmp_path):
    for name in ("gpt2", "opt-125m", "opt-350m", "merino-50m"):
        path = BUILTIN / "models" / f"{name}.json"
        card = load_card(path)
        assert card.schema_version == 1
        assert card.to_json() == json.loads(path.read_text())
        assert list(card.to_json()) == ["schema_version", *V1_KEYS]
        assert all(list(b) == list(V1_BLOCK_KEYS) for b in card.to_json()["blocks"])
        # the same card written as version 2 is the same decoder, and stays version 2
        v2 = edited(card.to_json(), schema_version=2)
        if card.positions == "rope":
            v2.pop("pos_offset")
        (tmp_path / "v2.json").write_text(json.dumps(v2))
        again = load_card(tmp_path / "v2.json")
        assert again == card and acc.params(again) == acc.params(card)
        assert again.to_json()["schema_version"] == 2
    # a card built in Python with no version 2 field is a version 1 card
    plain = Card("p", vocab=256, context=32, head_dim=16, blocks=(Block(64, 2.0, 4, 2),),
                 positions="rope")
    assert plain.to_json()["schema_version"] == 1 and "rope_theta" not in plain.to_json()


@pytest.mark.parametrize("data,fragment", [
    (edited(V2, block_kv_heads=3), "block 0 kv_heads 3 does not divide its 4 heads"),
    (edited(V2, block_kv_heads=0), "blocks[0].kv_heads must be a whole number from 1"),
    (edited(V2, block_kv_heads=2.0), "write 2, without a decimal point"),
    (edited(V2, block_ffn_ratio=2.5), "blocks[0].ffn_hidden and ffn_ratio are both given"),
    (edited(V2, block_ffn_hidden=None), "blocks[0].ffn_ratio is missing: give ffn_ratio"),
    (edited(V2, block_ffn="geglu"), 'blocks[0].ffn must be one of "gelu", "gelu_tanh", "relu"'),
    (edited(V2, norm="batchnorm"), 'norm must be one of "layernorm", "rmsnorm"'),
    (edited(V2, norm_eps=0), "norm_eps must be a finite number above 0"),
    (edited(V2, positions="learned"), "rope_theta applies to rope positions only"),
    (edited(V2, pos_offset=2), "pos_offset applies to learned positions only"),
    (edited(V2, qkv_bias="yes"), "qkv_bias must be true or false"),
    (edited(V2, rope_theta=-1.0), "rope_theta must be a finite number above 0"),
    (edited(V2, schema_version=3), "schema_version 3 is not supported (this version of "
                                   "merino-mobile reads schema_version 1, 2)"),
    (edited(V2, schema_version=1, rope_theta=None, norm=None, norm_eps=None, block_ffn=None,
            block_ffn_hidden=None, block_ffn_ratio=2.5),
     "kv_heads is a field of schema_version 2: set \"schema_version\": 2"),
    (edited(V2, schema_version=1, block_ffn_hidden=None, block_ffn_ratio=2.0, block_ffn=None,
            block_kv_heads=None), "norm, norm_eps, rope_theta are fields of schema_version 2"),
])
def test_inconsistent_v2_cards_are_one_line_naming_file_and_field(tmp_path, data, fragment):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as e:
        load_card(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert fragment in message, message


def test_cards_built_in_python_refuse_the_same():
    with pytest.raises(UserError, match="kv_heads 3 does not divide its 4 heads"):
        Card("x", 256, 32, 16, (Block(64, 2.0, 4, 1, kv_heads=3),))
    with pytest.raises(UserError, match="rope_theta 500000 is set but positions are learned"):
        Card("x", 256, 32, 16, (Block(64, 2.0, 4, 1),), rope_theta=5e5)
    with pytest.raises(UserError, match="ffn_ratio 2.0 disagrees with ffn_hidden 160"):
        Card("x", 256, 32, 16, (Block(64, 2.0, 4, 1, hidden=160),))
    with pytest.raises(UserError, match="ffn must be one of"):
        Card("x", 256, 32, 16, (Block(64, 2.0, 4, 1, ffn="swish"),))


# -- accounting against transformers -------------------------------------------------------------

REFERENCES = {  # shipped card: (transformers class, config, its parameter count)
    "smollm2-135m": ("LlamaForCausalLM", dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
        rms_norm_eps=1e-5, max_position_embeddings=8192), 134_515_008),
    "smollm2-360m": ("LlamaForCausalLM", dict(
        hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
        num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
        rms_norm_eps=1e-5, max_position_embeddings=8192), 361_821_120),
    "mobilellm-125m": ("LlamaForCausalLM", dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=32000, tie_word_embeddings=True,
        max_position_embeddings=2048), 124_635_456),
    "qwen2.5-0.5b": ("Qwen2ForCausalLM", dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
        rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768), 494_032_768),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_shipped_llama_cards_count_what_transformers_counts(name):
    import transformers

    cls, config, count = REFERENCES[name]
    config_cls = getattr(transformers, cls.replace("ForCausalLM", "Config"))
    with torch.device("meta"):
        hf = getattr(transformers, cls)(config_cls(**config))
        ours = Decoder(load_card(BUILTIN / "models" / f"{name}.json"), cache_len=16)
    card = ours.card
    assert acc.params(card) == sum(p.numel() for p in hf.parameters()) == count
    assert sum(p.numel() for p in ours.parameters()) == count
    assert acc.decoder_params(card) == sum(p.numel() for p in hf.model.layers.parameters())
    # one layer's matrices are transformers' linear weights, the gate and the narrower K, V too
    linears = [m.weight.shape for m in hf.model.layers[0].modules()
               if isinstance(m, torch.nn.Linear)]
    layer = acc.LayerShape.of(card, card.blocks[0])
    assert sorted((r, c) for _, r, c in layer.matrices()) == sorted(tuple(s) for s in linears)
    e, b = card.blocks[0].width, card.blocks[0]
    assert acc.kv_cache_bytes(card, 512) == b.depth * 2 * 512 * b.n_kv_heads * card.head_dim * 4
    assert acc.flops_per_token(card, 512) == (b.depth * (2 * layer.matrix_params + 4 * e * 512)
                                              + 2 * e * card.vocab)
    assert card.to_json()["meta"]["params_transformers"] == count


def test_gated_and_grouped_layers_counted_term_by_term():
    e, f, kv = 64, 160, 32
    layer = acc.LayerShape(e, f, kv_width=kv, ffn="swiglu", qkv_bias=True, out_bias=False,
                           ffn_bias=False, norm="rmsnorm")
    assert layer.matrix_params == 2 * e * e + 2 * e * kv + 3 * e * f
    assert layer.vector_params == 2 * e + (e + 2 * kv)
    assert layer.flops(10) == 2 * layer.matrix_params + 4 * e * 10
    assert layer.kv_bytes(10) == 2 * 10 * kv * 4
    # the version 1 per-term functions (what the design solver adds up) are unchanged
    assert acc.layer_params(e, 128) == 4 * e * e + 2 * e * 128 + (4 * e + 128 + e) + 4 * e
    assert acc.layer_params(e, 128, bias=False) == 4 * e * e + 2 * e * 128 + 4 * e
    for card in (LLAMA, GPTISH):
        model = build_decoder(card)
        assert sum(p.numel() for p in model.parameters()) == acc.params(card)
        assert acc.weight_bytes(card, "fp32") == 4 * acc.params(card)


# -- the decoder ---------------------------------------------------------------------------------

@pytest.mark.parametrize("card", [LLAMA, GPTISH], ids=lambda c: c.name)
def test_decoder_caches_kv_heads_only_and_decodes_exactly(card):
    model = build_decoder(card, seed=3)
    shapes = [tuple(c.k.shape) for c in model.caches]
    assert shapes == [(b.n_kv_heads, card.context, card.head_dim)
                      for b in card.blocks for _ in range(b.depth)]
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.reset_cache()
        steps = [model(ids[:, :7], torch.tensor([0]))]
        steps += [model(ids[:, i:i + 1], torch.tensor([i])) for i in range(7, 12)]
        full = model.forward_train(ids)  # the training path, no cache
    for i, got in zip(range(7, 13), steps, strict=True):
        torch.testing.assert_close(got[0], full[0, i - 1], rtol=1e-5, atol=1e-5)


# -- exports: every new kind, verified as the existing formats are -------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("card,quant", [(LLAMA, "fp32"), (GPTISH, "int8")],
                         ids=["llama-fp32", "gptish-int8"])
def test_executorch_exports_verify(tmp_path, card, quant):
    from merino_mobile.export.executorch import export_executorch, verify_executorch

    model = build_decoder(card, seed=1)
    pte = export_executorch(model, quant, tmp_path / "m.pte", prompt_len=8)
    v = verify_executorch(model, pte, quant)
    assert v["passed"], v
    assert v["max_rel_err"] <= 1e-4 if quant == "fp32" else v["cosine_min"] >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("card,quant", [(LLAMA, "int8"), (GPTISH, "fp32")],
                         ids=["llama-int8", "gptish-fp32"])
def test_onnx_exports_verify_with_kv_heads_caches(tmp_path, card, quant):
    from merino_mobile.export.onnx import PAST, export_onnx, onnx_session, verify_onnx

    model = build_decoder(card, seed=1)
    path = export_onnx(model, quant, tmp_path / "m.onnx", prompt_len=8)
    v = verify_onnx(model, path, quant)
    assert v["passed"], v
    past = [i.shape for i in onnx_session(path).get_inputs() if i.name.startswith(PAST)]
    assert past == [[b.n_kv_heads, card.context, card.head_dim]
                    for b in card.blocks for _ in range(b.depth) for _kv in "kv"]


@pytest.mark.slow
def test_coreml_converts_and_verifies_structurally(tmp_path):
    from merino_mobile.export.coreml import export_coreml, verify_coreml

    model = build_decoder(LLAMA, seed=1)
    package = export_coreml(model, "int8", tmp_path / "m.mlpackage", prompt_len=8)
    v = verify_coreml(model, package, "int8")
    assert v["passed"], v["problems"]
    assert v["structure"]["states"]["caches_2_k"] == [[1, 48, 16], "FLOAT16"]  # the MQA block


# -- import --------------------------------------------------------------------------------------

def _perturbed(model):
    """Weights well away from their init (norms off 1, biases off 0): a harsher comparison."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def _tokenizer(path, ids: int) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(ids)}, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(path))


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """Tiny random models of the four families, saved by transformers: {family: (model, dir)}."""
    import transformers as T

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    models = {
        "llama": T.LlamaForCausalLM(T.LlamaConfig(
            vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)),
        "qwen2": T.Qwen2ForCausalLM(T.Qwen2Config(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
            tie_word_embeddings=False)),
        "opt": T.OPTForCausalLM(T.OPTConfig(
            vocab_size=256, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32)),
        "gpt2": T.GPT2LMHeadModel(T.GPT2Config(
            vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
            eos_token_id=0)),
    }
    out = {}
    for family, model in models.items():
        folder = root / f"Tiny-{family.upper()}"
        # the Qwen2 weights in shards, with their index
        _perturbed(model).save_pretrained(folder, safe_serialization=True,
                                          max_shard_size="60KB" if family == "qwen2" else "1GB")
        out[family] = (model, folder)
    _tokenizer(out["qwen2"][1] / "tokenizer.json", 200)
    return out


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


def _check_logits(model, card, checkpoint) -> None:
    ours = build_decoder(card, checkpoint=checkpoint)
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
        assert _rel_err(ours.forward_train(ids), ref) < 1e-4
        ours.reset_cache()  # the cached path: prefill 23 tokens, then decode the 24th
        ours(ids[:, :23], torch.tensor([0]))
        assert _rel_err(ours(ids[:, 23:], torch.tensor([23]))[0], ref[0, -1]) < 1e-4


@pytest.mark.parametrize("family", ["llama", "qwen2", "opt", "gpt2"])
def test_imported_decoder_matches_transformers_logits(hf, tmp_path, family):
    model, folder = hf[family]
    r = import_folder(folder, Workspace(tmp_path))
    assert r.card_path == tmp_path / "models" / f"tiny-{family}.json"
    assert load_card(r.card_path) == r.card and r.card.meta["family"] == family
    _check_logits(model, r.card, r.checkpoint)
    expected = {"llama": ("rmsnorm", "swiglu", 2), "qwen2": ("rmsnorm", "swiglu", 1),
                "opt": ("layernorm", "relu", 4), "gpt2": ("layernorm", "gelu_tanh", 4)}[family]
    b = r.card.blocks[0]
    assert (r.card.norm, b.ffn, b.n_kv_heads) == expected
    assert acc.params(r.card) == sum(p.numel() for p in model.parameters())
    assert (r.tokenizer is not None) == (family == "qwen2")


def test_import_command_writes_card_checkpoint_and_tokenizer(hf, tmp_path, monkeypatch, capsys):
    model, folder = hf["qwen2"]
    ws = ["--workspace", str(tmp_path)]
    code, out, err = run(monkeypatch, capsys, "import", str(folder), "--name", "q", "--json", *ws)
    assert code == 0, err
    result = json.loads(out)
    card, checkpoint = tmp_path / "models" / "q.json", tmp_path / "build" / "q" / "import"
    assert result["card"] == str(card)
    assert result["checkpoint"] == str(checkpoint / "model.safetensors")
    assert result["tokenizer"] == str(checkpoint / "tokenizer.json")
    assert (checkpoint / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
    c = load_card(card)
    assert c.has_qkv_bias and not c.has_out_bias and not c.bias  # Qwen2's biases
    assert set(load_file(result["checkpoint"])) == set(build_decoder(c).state_dict())
    # the card is a workspace card like any other, and its checkpoint exports
    code, out, err = run(monkeypatch, capsys, "info", "q", "--json", *ws)
    assert code == 0, err
    assert json.loads(out)["params"] == result["params"]
    code, _, err = run(monkeypatch, capsys, "import", str(folder), "--name", "q", *ws)
    assert code == 2 and "q.json exists; choose another --name or pass --force" in err
    code, out, err = run(monkeypatch, capsys, "import", str(folder), "--name", "q", "--force", *ws)
    assert code == 0 and "qwen2" in out


def test_a_base_model_folder_without_prefixes_and_with_buffers_imports(hf, tmp_path):
    """GPT-2 as the hub ships it: GPT2Model names (no "transformer."), causal-mask buffers."""
    model, folder = hf["gpt2"]
    bare = tmp_path / "gpt2"
    bare.mkdir()
    shutil.copy(folder / "config.json", bare)
    tensors = {k.removeprefix("transformer."): v for k, v in
               load_file(folder / "model.safetensors").items()}
    tensors["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    save_file(tensors, bare / "model.safetensors")
    r = import_folder(bare, Workspace(tmp_path))
    _check_logits(model, r.card, r.checkpoint)


def _copy(hf, family: str, tmp_path):
    dest = tmp_path / f"copy-{family}"
    shutil.copytree(hf[family][1], dest)
    return dest


def _edit_config(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _edit_tensors(folder, drop=(), replace=None):
    path = folder / "model.safetensors"
    tensors = {k: v for k, v in load_file(path).items() if k not in drop}
    save_file(tensors | (replace or {}), path)


@pytest.mark.parametrize("case,fragment", [
    ("no-config", "no model config at"),
    ("mistral", "model_type 'mistral' is not supported; import reads the llama, qwen2, opt, gpt2"),
    ("classifier", "is not a causal language model of the llama family"),
    ("no-weights", "has no model.safetensors (nor shards"),
    ("missing-shard", "shard model-00002-of-"),
    ("missing-tensors", "tensor 'model.layers.0.self_attn.k_proj.weight' is missing"),
    ("wrong-shape", "tensor 'model.norm.weight' has shape [63], config.json needs [64]"),
    ("extra-tensor", "tensors the llama layout has no place for: "
                     "['model.layers.0.self_attn.q_norm.weight']"),
    ("post-ln-opt", "do_layer_norm_before is false (post-LN layers"),
    ("rope-scaling", "rope_parameters asks for 'linear' rope scaling; the card cannot express"),
    ("head-dim", "head_dim 32 x 4 heads is not hidden_size 64"),
    ("kv-heads", "block 0 kv_heads 3 does not divide its 4 heads"),
    ("big-tokenizer", "has 300 ids but the card's vocabulary is 256"),
    ("bad-name", "card name '../x' is not a plain file name"),
])
def test_bad_folders_are_one_clear_line(hf, tmp_path, monkeypatch, capsys, case, fragment):
    family = {"post-ln-opt": "opt", "missing-shard": "qwen2"}.get(case, "llama")
    folder = _copy(hf, family, tmp_path)
    name = None
    if case == "no-config":
        (folder / "config.json").unlink()
    elif case == "mistral":
        _edit_config(folder, model_type="mistral")
    elif case == "classifier":
        _edit_config(folder, architectures=["LlamaForSequenceClassification"])
    elif case == "no-weights":
        (folder / "model.safetensors").unlink()
    elif case == "missing-shard":
        next(folder.glob("model-00002-of-*.safetensors")).unlink()
    elif case == "missing-tensors":  # two gone: the first, in layer order, is named
        _edit_tensors(folder, drop=("model.layers.1.mlp.up_proj.weight",
                                    "model.layers.0.self_attn.k_proj.weight"))
    elif case == "wrong-shape":
        _edit_tensors(folder, replace={"model.norm.weight": torch.ones(63)})
    elif case == "extra-tensor":  # a Qwen3-style norm on q the card has no place for
        _edit_tensors(folder, replace={"model.layers.0.self_attn.q_norm.weight": torch.ones(16)})
    elif case == "post-ln-opt":
        _edit_config(folder, do_layer_norm_before=False)
    elif case == "rope-scaling":
        _edit_config(folder, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                              "rope_theta": 10000.0})
    elif case == "head-dim":
        _edit_config(folder, head_dim=32)
    elif case == "kv-heads":
        _edit_config(folder, num_key_value_heads=3)
    elif case == "big-tokenizer":
        _tokenizer(folder / "tokenizer.json", 300)
    elif case == "bad-name":
        name = "../x"
    with pytest.raises(UserError) as e:
        import_folder(folder, Workspace(tmp_path), name=name)
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "models").exists() and not (tmp_path / "build").exists()
    if case == "wrong-shape":  # and the command says it in one line, exit code 2
        code, _, err = run(monkeypatch, capsys, "import", str(folder), "--workspace",
                           str(tmp_path))
        assert code == 2 and fragment in " ".join(err.split()) and "Traceback" not in err
