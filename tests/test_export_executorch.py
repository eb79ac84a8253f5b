"""ExecuTorch export: real .pte programs run by the real ExecuTorch runtime on this host."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from merino_mobile import accounting
from merino_mobile.card import Block, Card
from merino_mobile.errors import UserError
from merino_mobile.export import FORMATS, check_pair, export
from merino_mobile.export.executorch import (
    export_executorch,
    load_method,
    lower_to_pte,
    verify_executorch,
)
from merino_mobile.export.verify import PROMPT, compare, fit_prompt, reference_run, run_steps
from merino_mobile.model import FFN, build_decoder

# two widths joined by a projection; the first block shares one layer over depth 2
SHARED = Card(name="tiny-shared", vocab=256, context=48, head_dim=16,
              blocks=(Block(64, 4.0, 4, 2, shared=True), Block(128, 2.0, 8, 1)))
# unshared, embedding narrower than the blocks, untied head, OPT-style position offset
UNSHARED = Card(name="tiny-unshared", vocab=256, context=48, head_dim=16, embed_width=32,
                tied_head=False, pos_offset=2, blocks=(Block(64, 4.0, 4, 1), Block(128, 2.0, 8, 1)))


@pytest.mark.slow
def test_fp32_matches_eager_through_prefill_and_decode(tmp_path):
    model = build_decoder(SHARED, seed=1)
    pte = export_executorch(model, "fp32", tmp_path / "m.pte", prompt_len=8)
    v = verify_executorch(model, pte, "fp32")
    assert v["passed"], v
    assert v["steps"] == 24  # prompt of 24 (half the cache), then 24 decode steps
    assert v["max_rel_err"] < 1e-4 and v["greedy_agreement"] == 1.0

    # the program keeps its KV cache between calls: decoding a token after a prefill differs
    # from running that token alone at the same position on a fresh program
    method = load_method(pte)
    method.execute([torch.tensor([[1, 2, 3]]), torch.tensor([0])])
    after_prefill = method.execute([torch.tensor([[4]]), torch.tensor([3])])[0]
    alone = load_method(pte).execute([torch.tensor([[4]]), torch.tensor([3])])[0]
    assert not torch.allclose(after_prefill, alone)
    with torch.no_grad():
        model.reset_cache()
        torch.testing.assert_close(after_prefill, model(torch.tensor([[1, 2, 3, 4]]),
                                                        torch.tensor([0])), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_int4_artifact_runs_close_to_eager(tmp_path):
    """int4 here; int8 runs end to end in tests/test_export_cli.py (exports are slow)."""
    model = build_decoder(UNSHARED, seed=2)
    pte = export_executorch(model, "int4", tmp_path / "int4.pte", prompt_len=8)
    v = verify_executorch(model, pte, "int4")
    assert v["passed"], v
    assert v["max_rel_err"] > 1e-6  # really quantized: not bit-identical to fp32
    assert v["cosine_min"] >= 0.95
    # the layer matrices are stored compressed: the program is well below the fp32 weights
    assert pte.stat().st_size < 0.6 * accounting.weight_bytes(UNSHARED, "fp32")


@pytest.mark.slow
def test_int4_quantizes_the_embedding_and_a_tied_head(tmp_path):
    """As ExecuTorch's LLM export: a 4-bit token table and a 4-bit copy of it as the head, so a
    model whose weights are mostly its vocabulary shrinks with int4 (the fp32 table alone is
    over three quarters of this card's fp32 weights)."""
    card = Card(name="tiny-tied", vocab=2048, context=48, head_dim=16,
                blocks=(Block(64, 2.0, 4, 1),))
    model = build_decoder(card, seed=3)
    pte = export_executorch(model, "int4", tmp_path / "int4.pte", prompt_len=8)
    v = verify_executorch(model, pte, "int4")
    assert v["passed"] and v["greedy_agreement"] >= 0.9, v
    fp32 = accounting.weight_bytes(card, "fp32")
    table_fp32 = 2048 * 64 * 4
    assert table_fp32 > 0.75 * fp32
    assert pte.stat().st_size < 0.4 * fp32  # an fp32 table alone would be over 0.75
    assert model.head is None  # the caller's model is untouched: the export worked on a copy


@pytest.mark.slow
def test_lower_to_pte_puts_several_methods_in_one_program(tmp_path):
    """The profiler's path: many small modules, one program, each method runs by name."""
    torch.manual_seed(0)
    linear, ffn = nn.Linear(64, 128), FFN(64, 256, bias=True)
    t = torch.export.Dim("T", min=1, max=16)
    x = torch.randn(1, 4, 64)
    pte = lower_to_pte({"linear": (linear, (x,), None),
                        "ffn": (ffn, (x,), {"x": {1: t}})}, "fp32", tmp_path / "micro.pte")
    torch.testing.assert_close(load_method(pte, "linear").execute([x])[0], linear(x))
    x7 = torch.randn(1, 7, 64)  # another length than traced: the dynamic dimension works
    with torch.no_grad():
        torch.testing.assert_close(load_method(pte, "ffn").execute([x7])[0], ffn(x7),
                                   rtol=1e-4, atol=1e-5)


def test_lower_to_pte_refuses_unknown_quant(tmp_path):
    with pytest.raises(UserError, match="executorch does not support quantization 'fp16'"):
        lower_to_pte({"m": (nn.Linear(4, 4), (torch.zeros(1, 4),), None)}, "fp16",
                     tmp_path / "x.pte")


def test_unsupported_pairs_are_refused_with_the_list(tmp_path):
    with pytest.raises(UserError, match=r"executorch does not support quantization 'fp16'.*"
                       r"executorch: fp32, int8, int4; coreml: fp16, int8, int4"):
        export(SHARED, "executorch", "fp16", tmp_path / "out")
    with pytest.raises(UserError, match="unknown export format 'tflite'"):
        check_pair("tflite", "int8")
    assert not (tmp_path / "out").exists()
    assert set(FORMATS) == {"executorch", "coreml", "onnx", "gguf"}


def test_existing_out_dir_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="exists; choose another --out or pass --force"):
        export(SHARED, "executorch", "fp32", out)
    assert (out / "keep.txt").read_text() == "mine"


def test_verify_compare_verdicts():
    ref = torch.randn(5, 256)
    assert compare(ref, ref.clone(), "fp32")["passed"]
    off = compare(ref, ref * 1.01, "fp32")
    assert not off["passed"] and off["max_rel_err"] == pytest.approx(0.01, rel=1e-3)
    assert compare(ref, ref * 1.01, "int8")["passed"]  # int8 is judged by cosine similarity
    assert not compare(ref, torch.randn(5, 256), "int8")["passed"]
    assert not compare(ref, ref[:4], "fp32")["passed"]
    nan = ref.clone()
    nan[0, 0] = float("nan")
    assert not compare(ref, nan, "int4")["passed"]


def test_reference_run_is_greedy_and_fits_the_cache():
    model = build_decoder(SHARED, cache_len=20)
    prompt, steps = fit_prompt(model)
    assert prompt == PROMPT[:10] and steps == 10
    ref = reference_run(model, prompt, steps)
    assert ref["logits"].shape == (11, 256)
    assert ref["tokens"] == [int(r.argmax()) for r in ref["logits"][:-1]]
    # the eager model itself, driven through run_steps, reproduces its reference exactly
    got = run_steps(lambda tok, start: model(tok, start).detach(), prompt, ref["tokens"])
    assert compare(ref["logits"], got, "fp32")["max_rel_err"] < 1e-6


def test_dynamic_views_are_rewritten_to_infer_their_one_symbolic_size():
    """A view at a dynamic length is recorded with the symbol; the rewrite writes -1 instead,
    which XNNPACK can delegate, and the program computes the same."""
    from merino_mobile.export.executorch import _infer_dynamic_views

    class Fold(nn.Module):
        def forward(self, x):  # x [1, T, 8] -> [1, T, 2, 4] -> [1, T, 8]
            return (x.view(1, x.shape[1], 2, 4) * 2).view(1, x.shape[1], 8)

    x = torch.randn(1, 5, 8)
    t = torch.export.Dim("t", min=1, max=64)
    program = torch.export.export(Fold(), (x,), dynamic_shapes=({1: t},), strict=False)
    sizes = [n.args[1] for n in program.graph.nodes
             if n.op == "call_function" and "view" in str(n.target)]
    assert len(sizes) == 2 and all(not isinstance(s[1], int) for s in sizes)
    assert _infer_dynamic_views(program) == 2
    sizes = [n.args[1] for n in program.graph.nodes
             if n.op == "call_function" and "view" in str(n.target)]
    assert sizes == [[1, -1, 2, 4], [1, -1, 8]]
    assert _infer_dynamic_views(program) == 0  # nothing symbolic is left
    for length in (1, 5, 17):
        y = torch.randn(1, length, 8)
        assert torch.equal(program.module()(y), Fold()(y))


def test_the_kernels_per_call_log_is_held_back_and_the_rest_shown(capfd):
    """What the C++ runtime writes to fd 2 inside `filtered_native_log`: custom_sdpa's line per
    call is dropped, any other line still reaches stderr."""
    import os

    from merino_mobile.export.executorch import filtered_native_log

    with filtered_native_log():
        os.write(2, b"[kernel_runtime_context.h:91] No temp allocator provided\n" * 3)
        os.write(2, b"[method.cpp:1] a real warning\n")
    err = capfd.readouterr().err
    assert "No temp allocator" not in err and err.count("a real warning") == 1
    with pytest.raises(ValueError), filtered_native_log():  # an error does not lose the log
        os.write(2, b"[op.cpp:2] why it failed\n")
        raise ValueError("boom")
    assert "why it failed" in capfd.readouterr().err
