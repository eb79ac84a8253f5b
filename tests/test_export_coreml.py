"""Core ML export: real coremltools conversions of tiny decoders to stateful .mlpackages.

Core ML cannot predict on Linux, so packages are checked structurally here; the graph handed to
coremltools (after `scatter_cache_writes`) is executed by torch to prove it is the decoder.
"""

from __future__ import annotations

import platform

import pytest
import torch

from merino_mobile.accounting import params
from merino_mobile.card import Block, Card
from merino_mobile.errors import UserError
from merino_mobile.export import disk_size
from merino_mobile.export.coreml import (
    _exported,
    coreml_prediction_available,
    export_coreml,
    inspect_package,
    verify_coreml,
)
from merino_mobile.export.verify import compare, fit_prompt, reference_run, run_steps
from merino_mobile.model import build_decoder

PLAIN = Card("tiny-plain", vocab=256, context=64, head_dim=16, blocks=(Block(64, 4.0, 4, 2),))
# embedding 32 -> shared block of width 64 (depth 2) -> projection -> width 96 -> untied head
MIXED = Card("tiny-mixed", vocab=256, context=64, head_dim=16, embed_width=32, tied_head=False,
             positions="rope", blocks=(Block(64, 2.0, 4, 2, shared=True), Block(96, 2.0, 6, 1)))


@pytest.fixture(scope="module")
def plain():
    return build_decoder(PLAIN)


@pytest.fixture(scope="module")
def packages(plain, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml")
    return {q: export_coreml(plain, q, out / f"{q}.mlpackage", prompt_len=8)
            for q in ("fp16", "int8", "int4")}


def test_prediction_availability_is_stated():
    available, why = coreml_prediction_available()
    assert available == (platform.system() == "Darwin")
    if platform.system() == "Linux":
        assert (available, why) == (False, "Core ML prediction needs macOS; this is Linux")


@pytest.mark.slow
def test_converted_graph_computes_the_decoder():
    """The program coremltools converts (cache writes rewritten as scatters) runs the decoder."""
    model = build_decoder(MIXED, seed=2)
    program = _exported(model, prompt_len=8)
    prompt, steps = fit_prompt(model)
    ref = reference_run(model, prompt, steps)
    module = program.module()
    with torch.no_grad():
        got = run_steps(module, prompt, ref["tokens"])
    result = compare(ref["logits"], got, "fp32")
    assert result["passed"] and result["max_rel_err"] <= 1e-5, result
    # the caches really are written through the rewritten scatters (state, not recomputation)
    assert any(b.abs().sum() > 0 for name, b in module.named_buffers() if "caches" in name)


@pytest.mark.slow
@pytest.mark.parametrize("quant, op, dtype", [
    ("fp16", None, "FLOAT16"),
    ("int8", "constexpr_blockwise_shift_scale", "INT8"),
    ("int4", "constexpr_lut_to_dense", "UINT4"),
])
def test_package_structure_and_compression(plain, packages, quant, op, dtype):
    result = verify_coreml(plain, packages[quant], quant)
    assert result["passed"] and result["problems"] == [], result["problems"]
    info = result["structure"]
    assert info["spec_version"] >= 9  # iOS 18: the first Core ML with state
    assert info["inputs"] == {"tokens": [[1, 64], "INT32"], "start": [[1], "INT32"]}
    assert info["outputs"] == {"logits": [[1, 256], "FLOAT16"]}
    assert sorted(info["states"]) == ["caches_0_k", "caches_0_v", "caches_1_k", "caches_1_v"]
    assert info["ops"]["write_state"] == 4 and "scatter_nd" in info["ops"]
    assert set(info["weights"]) == {dtype}
    if op:
        assert info["ops"][op] == 14  # embedding, positions, 6 matrices (q k v o up down) x 2
    else:
        assert not any(t.startswith("constexpr") for t in info["ops"])
    if platform.system() != "Darwin":
        assert result["prediction_parity"] == (
            "skipped: Core ML prediction needs macOS; this is Linux")


@pytest.mark.slow
def test_compressed_packages_are_smaller(packages):
    fp16, int8, int4 = (disk_size(packages[q]) for q in ("fp16", "int8", "int4"))
    # tiny model: fixed overhead of the package keeps the ratios above the ideal 0.5 and 0.25
    assert int8 < 0.6 * fp16
    assert int4 < 0.7 * int8


@pytest.mark.slow
def test_wrong_package_or_quant_fails_validation(plain, packages):
    claimed = verify_coreml(plain, packages["fp16"], "int8")
    assert not claimed["passed"]
    assert any("constexpr_blockwise_shift_scale" in p for p in claimed["problems"])
    other = verify_coreml(build_decoder(MIXED), packages["fp16"], "fp16")
    assert not other["passed"]
    assert any(p.startswith("states") for p in other["problems"])


@pytest.mark.slow
def test_mixed_card_keeps_sharing_and_one_state_per_executed_layer(tmp_path):
    model = build_decoder(MIXED)
    path = export_coreml(model, "fp16", tmp_path / "mixed.mlpackage", prompt_len=8)
    result = verify_coreml(model, path, "fp16")
    assert result["passed"], result["problems"]
    assert len(result["structure"]["states"]) == 2 * MIXED.depth == 6
    # the shared layer is stored once: all weights fit in the card's parameter count
    # (a second copy would add 32768 elements)
    assert result["structure"]["weights"]["FLOAT16"] <= params(MIXED)


def test_refuses_unsupported_quant(plain, tmp_path):
    with pytest.raises(UserError, match="fp16, int8, int4"):
        export_coreml(plain, "fp32", tmp_path / "m.mlpackage", prompt_len=8)


def test_unreadable_package_is_a_user_error(plain, tmp_path):
    bad = tmp_path / "bad.mlpackage"
    bad.mkdir()
    with pytest.raises(UserError, match="not a readable Core ML package"):
        inspect_package(bad)
