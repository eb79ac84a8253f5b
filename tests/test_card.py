"""Cards and their accounting, checked against transformers' own OPT and GPT-2 models."""

import json

import pytest
import torch

from merino_mobile import accounting as acc
from merino_mobile.card import Block, Card, load_card, save_card
from merino_mobile.entropy import EntropySettings, effectiveness, entropy
from merino_mobile.errors import UserError
from merino_mobile.workspace import BUILTIN


def hf_params(name: str) -> int:
    import transformers  # a test dependency (pip install -e ".[test]")

    with torch.device("meta"):
        if name == "gpt2":
            model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
        elif name == "opt-125m":
            model = transformers.OPTForCausalLM(transformers.OPTConfig(
                hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
                word_embed_proj_dim=768))
        else:
            model = transformers.OPTForCausalLM(transformers.OPTConfig(
                hidden_size=1024, num_hidden_layers=24, ffn_dim=4096, num_attention_heads=16,
                word_embed_proj_dim=512, do_layer_norm_before=False))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["gpt2", "opt-125m", "opt-350m"])
def test_reference_cards_match_transformers(name):
    card = load_card(BUILTIN / "models" / f"{name}.json")
    assert acc.params(card) == hf_params(name)


def test_known_counts():
    gpt2 = load_card(BUILTIN / "models" / "gpt2.json")
    assert acc.params(gpt2) == 124_439_808
    assert acc.kv_cache_bytes(gpt2, 512) == 12 * 2 * 512 * 768 * 4
    # decode FLOPs: 2 per weight of every layer matrix and the head, plus attention
    layer = 2 * (4 * 768 * 768 + 2 * 768 * 3072) + 4 * 768 * 512
    assert acc.flops_per_token(gpt2, 512) == 12 * layer + 2 * 768 * 50257
    assert effectiveness(gpt2, "deepmad") == pytest.approx(12 / 768)


def tiny(**kw) -> Card:
    blocks = kw.pop("blocks", (Block(64, 2.0, 4, 2, shared=False),))
    return Card(name="t", vocab=256, context=32, head_dim=16, blocks=blocks, **kw)


def test_sharing_counts_weights_once_and_compute_per_layer():
    shared = tiny(blocks=(Block(64, 2.0, 4, 3, shared=True),))
    plain = tiny(blocks=(Block(64, 2.0, 4, 3, shared=False),))
    one_layer = acc.layer_params(64, 128)
    assert acc.params(plain) - acc.params(shared) == 2 * one_layer
    assert acc.flops_per_token(shared, 32) == acc.flops_per_token(plain, 32)
    assert acc.kv_cache_bytes(shared, 32) == acc.kv_cache_bytes(plain, 32)
    assert entropy(shared) == entropy(plain)


def test_projections_between_widths_and_embedding():
    card = tiny(blocks=(Block(64, 2.0, 4, 1), Block(128, 1.0, 8, 1)), embed_width=32)
    # 32 -> 64 in, 64 -> 128 between blocks, 128 -> 32 out
    assert list(acc.transitions(card)) == [(32, 64), (64, 128), (128, 32)]
    expected = (256 * 32 + 32 * 64 + acc.layer_params(64, 128) + 32 * 64 + 64 * 128
                + acc.layer_params(128, 128) + 128 * 32 + 2 * 128)
    assert acc.params(card) == expected
    untied = tiny(blocks=card.blocks, embed_width=32, tied_head=False)
    assert acc.params(untied) - acc.params(card) == 256 * 32


def test_weight_bytes_per_format():
    card = tiny()
    n_matrix = sum(m.rows * m.cols for m in acc.matrices(card))
    vectors = acc.vector_params(card)
    assert acc.weight_bytes(card, "fp32") == 4 * (n_matrix + vectors)
    assert acc.weight_bytes(card, "fp16") == 2 * n_matrix + 4 * vectors
    assert acc.weight_bytes(card, "int8") < acc.weight_bytes(card, "fp16")
    assert acc.weight_bytes(card, "int4") < acc.weight_bytes(card, "int8")


def test_entropy_formula():
    card = tiny(blocks=(Block(64, 2.0, 4, 2), Block(128, 4.0, 8, 3)))
    import math
    h = 2 * (math.log(64) + math.log(128)) + 3 * (math.log(128) + math.log(512))
    assert entropy(card) == pytest.approx(h)
    weighted = EntropySettings(a=2.0, b=0.5, alpha=(1.0, 3.0))
    h2 = 2 * (2 * math.log(64) + 0.5 * math.log(128)) \
        + 3 * 3 * (2 * math.log(128) + 0.5 * math.log(512))
    assert entropy(card, weighted) == pytest.approx(h2)


@pytest.mark.parametrize("blocks,fragment", [
    ((Block(60, 2.0, 4, 1),), "not a multiple of head_dim"),
    ((Block(64, 2.0, 3, 1),), "has 3 heads but width 64 / head_dim 16 = 4"),
    ((Block(64, 2.0, 4, 0),), "depth 0"),
    ((), "no blocks"),
])
def test_invalid_cards_are_refused_with_the_reason(blocks, fragment):
    with pytest.raises(UserError, match=fragment):
        tiny(blocks=blocks)


def test_json_round_trip_and_refusals(tmp_path):
    card = tiny(blocks=(Block(64, 2.0, 4, 2, shared=True), Block(128, 1.5, 8, 1)), embed_width=32)
    path = save_card(card, tmp_path / "c.json")
    assert load_card(path) == card
    with pytest.raises(UserError, match="exists"):
        save_card(card, path)
    save_card(card, path, force=True)

    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(UserError, match=r"bad.json: not valid JSON \(line 1"):
        load_card(bad)
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    bad.write_text(json.dumps(data))
    with pytest.raises(UserError, match="schema_version 99"):
        load_card(bad)
    data = json.loads(path.read_text())
    del data["blocks"][0]["width"]
    bad.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"blocks\[0\] is missing field 'width'"):
        load_card(bad)
