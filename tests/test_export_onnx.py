"""ONNX export: real torch.onnx exports of tiny decoders, executed by the real ONNX Runtime."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from merino_mobile.accounting import params
from merino_mobile.card import Block, Card
from merino_mobile.errors import UserError
from merino_mobile.export.onnx import (
    PAST,
    PRESENT,
    export_onnx,
    mutated_buffers,
    onnx_session,
    to_onnx,
    verify_onnx,
)
from merino_mobile.model import build_decoder

# one block of two unshared layers, tied head, learned positions
PLAIN = Card("tiny-plain", vocab=256, context=64, head_dim=16, blocks=(Block(64, 4.0, 4, 2),))
# embedding 32 -> shared block of width 64 (depth 2) -> projection -> width 96 -> untied head
MIXED = Card("tiny-mixed", vocab=256, context=64, head_dim=16, embed_width=32, tied_head=False,
             positions="rope", blocks=(Block(64, 2.0, 4, 2, shared=True), Block(96, 2.0, 6, 1)))


def ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def plain():
    return build_decoder(PLAIN)


@pytest.fixture(scope="module")
def fp32_plain(plain, tmp_path_factory):
    return export_onnx(plain, "fp32", tmp_path_factory.mktemp("onnx") / "plain.onnx", prompt_len=8)


def test_mutated_buffers_finds_the_caches_and_restores_them(plain):
    before = {n: b.clone() for n, b in plain.named_buffers()}
    names = mutated_buffers(plain, (torch.tensor([[1, 2, 3]]), torch.tensor([0])))
    assert names == [f"caches.{i}.{kv}" for i in range(2) for kv in "kv"]
    for n, b in plain.named_buffers():
        assert torch.equal(b, before[n]), n


@pytest.mark.slow
def test_fp32_matches_eager_with_cache_as_inputs_and_outputs(plain, fp32_plain):
    session = onnx_session(fp32_plain)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    caches = [f"caches.{i}.{kv}" for i in range(PLAIN.depth) for kv in "kv"]
    assert list(inputs) == ["tokens", "start"] + [PAST + c for c in caches]
    assert outputs == ["logits"] + [PRESENT + c for c in caches]
    assert isinstance(inputs["tokens"].shape[1], str)  # T is dynamic: prefill and decode
    assert inputs[PAST + caches[0]].shape == [4, 64, 16]  # heads, cache_len, head_dim

    result = verify_onnx(plain, fp32_plain, "fp32")
    assert result["passed"], result
    assert result["max_rel_err"] <= 1e-4
    assert result["steps"] == 32 and result["greedy_agreement"] == 1.0
    assert result["cache_inputs"] == 2 * PLAIN.depth


@pytest.mark.slow
def test_fp32_projections_sharing_untied_head_rope(tmp_path):
    model = build_decoder(MIXED, seed=1)
    path = export_onnx(model, "fp32", tmp_path / "mixed.onnx", prompt_len=8)
    result = verify_onnx(model, path, "fp32")
    assert result["passed"] and result["max_rel_err"] <= 1e-4, result
    # one cache pair per executed layer: the shared layer runs twice with two caches
    assert result["cache_inputs"] == 2 * MIXED.depth == 6
    # the shared layer's weights are stored once, as the card counts them (an unshared copy
    # would add a full layer, ~25% of this model)
    floats = sum(numpy_helper.to_array(i).size for i in onnx.load(str(path)).graph.initializer
                 if i.data_type == onnx.TensorProto.FLOAT)
    assert params(MIXED) <= floats < 1.05 * params(MIXED)


@pytest.mark.slow
def test_int4_is_smaller_and_close(plain, fp32_plain, tmp_path):
    path = export_onnx(plain, "int4", tmp_path / "int4.onnx", prompt_len=8)
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops(path)  # the embedding is 4-bit too
    assert path.stat().st_size < 0.25 * fp32_plain.stat().st_size
    result = verify_onnx(plain, path, "int4")
    # a random-weight tiny model measures logit cosine ~0.985 here
    assert result["passed"] and result["cosine_min"] >= 0.95, result
    assert result["greedy_agreement"] >= 0.9


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


@pytest.mark.slow
def test_to_onnx_generic_module_with_dynamic_rows(tmp_path):
    torch.manual_seed(0)
    module = Mlp().eval()
    rows = torch.export.Dim("rows", min=1, max=128)
    path = to_onnx(module, (torch.randn(4, 32),), "fp32", tmp_path / "mlp.onnx",
                   dynamic_shapes={"x": {0: rows}}, input_names=["x"], output_names=["y"])
    x = torch.randn(7, 32)
    (y,) = onnx_session(path).run(["y"], {"x": x.numpy()})
    np.testing.assert_allclose(y, module(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_refuses_unsupported_quant_with_the_supported_list(plain, tmp_path):
    with pytest.raises(UserError, match="fp32, int8, int4"):
        export_onnx(plain, "fp16", tmp_path / "m.onnx", prompt_len=8)
    assert not (tmp_path / "m.onnx").exists()


def test_refuses_a_card_beyond_the_protobuf_limit(plain, tmp_path, monkeypatch):
    import merino_mobile.export.onnx as onnx_export

    # a real over-2-GB card would need 2 GB of RAM here; lower the limit instead
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 4 * params(PLAIN))
    with pytest.raises(UserError, match="at most 2 GB.*--format executorch"):
        export_onnx(plain, "fp32", tmp_path / "m.onnx", prompt_len=8)
    assert not (tmp_path / "m.onnx").exists()


def test_unreadable_artifact_is_a_user_error(plain, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot load"):
        verify_onnx(plain, bad, "fp32")


@pytest.mark.slow
def test_cli_export_onnx_int8_json(tmp_path, fp32_plain):
    """`merino-mobile export ... --format onnx --quant int8 --json`, end to end in a subprocess."""
    card = tmp_path / "tiny.json"
    card.write_text(json.dumps(PLAIN.to_json()))
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", "from merino_mobile.cli import main; main()", "export", str(card),
         "--format", "onnx", "--quant", "int8", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["format"] == "onnx" and report["quant"] == "int8"
    artifact = out / "model.onnx"
    assert report["size_bytes"] == artifact.stat().st_size < 0.4 * fp32_plain.stat().st_size
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops(artifact)
    verification = report["verification"]
    # a random-weight tiny model measures logit cosine ~0.9996 here (same card and seed)
    assert verification["passed"] and verification["cosine_min"] >= 0.99, verification
    assert verification["greedy_agreement"] >= 0.9
    assert verification["runtime"].startswith("onnxruntime")
