"""ExecuTorch export: torch.export -> quantize -> XNNPACK delegate -> .pte, and its verification.

`lower_to_pte` is the generic path (any modules, several methods in one program); the profiler
uses it for micro-benchmarks. `export_executorch` lowers a whole decoder as one "forward" method
with a dynamic sequence length: the caller prefills P tokens, then decodes one at a time, and the
KV caches live in the program as mutable buffers (the same design as ExecuTorch's LLM export).

Quantization, as the XNNPACK backend runs it:
- fp32: none.
- int8: int8 dynamic activations, int8 per-channel weights, via the XNNPACK quantizer (pt2e).
- int4: int8 dynamic activations, int4 group-wise weights (groups of 32) via torchao `quantize_`;
  for a whole decoder, as ExecuTorch's own LLM export does it, the token embedding too (4-bit
  group-wise, `quantized_decomposed::embedding_4bit`, through ExecuTorch's `EmbeddingQuantHandler`)
  and the head, a tied one included: it becomes a Linear with a copy of the table's weights, so
  it is quantized like every other matrix instead of running fp32 from the embedding (which made
  int4 programs of tied cards larger and slower than they need be, and left the head of the
  profile's int4 micro-benchmark, a quantized Linear, unlike the model's). A program with a
  quantized embedding needs ExecuTorch's quantized kernels registered before it loads
  (`load_llm_kernels`; else "Failed to load method forward, error 0x14"), which every
  loader of this project does; a phone's executor_runner links them (`runner build`).

Attention, in every program this module lowers (whole decoders and the profiler's micro-models
alike, so the table times what is shipped), runs on ExecuTorch's LLM ops (`model.use_llm_ops`):
`update_cache` writes the new keys and values and `custom_sdpa` attends only the positions up to
the current one, so a decode step at position 10 costs less than one at position 2000, and the
cache is read in place for grouped-query attention. They run as ExecuTorch kernels between the
XNNPACK partitions (as in ExecuTorch's own LLM export); the same loader registers them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from merino_mobile.accounting import INT4_GROUP
from merino_mobile.formats import check_pair
from merino_mobile.model import Decoder, use_llm_ops

METHOD = "forward"

Method = tuple[nn.Module, tuple, "dict | None"]


def _quantize_int4(module: nn.Module) -> nn.Module:
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    def grouped(m: nn.Module, fqn: str) -> bool:
        return isinstance(m, nn.Linear) and m.in_features % INT4_GROUP == 0

    def per_channel(m: nn.Module, fqn: str) -> bool:
        # a linear whose input width is not a multiple of the group: one scale per output row
        return isinstance(m, nn.Linear) and m.in_features % INT4_GROUP != 0

    quantize_(module, Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerGroup(INT4_GROUP)), filter_fn=grouped)
    quantize_(module, Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerAxis(0)), filter_fn=per_channel)
    return module


def load_llm_kernels() -> None:
    """Register ExecuTorch's quantized kernels (embedding_4bit and friends) and its LLM ops
    (`update_cache`, `custom_sdpa`) with the runtime of this process: a program that uses them
    does not load without them. The ops' library is loaded directly: importing its Python
    module pulls in torch's compiler (seconds of a worker's start-up)."""
    import importlib.util

    import executorch.kernels.quantized  # noqa: F401
    import torch
    from executorch.extension.pybindings import _C  # noqa: F401  (the runtime the ops join)

    try:
        torch.ops.llama.custom_sdpa  # noqa: B018  (registered already)
        return
    except (AttributeError, RuntimeError):
        pass
    spec = importlib.util.find_spec("executorch.extension.llm.custom_ops")
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    libs = [lib for f in folders for lib in f.glob("*custom_ops_aot_lib.*")]
    if not libs:
        raise RuntimeError("this executorch install has no LLM custom ops library "
                           "(extension/llm/custom_ops/libcustom_ops_aot_lib.so); reinstall "
                           "the pinned executorch")
    torch.ops.load_library(str(libs[0]))


def _quantize_decoder_int4(model: Decoder) -> Decoder:
    """The embedding and head of an int4 decoder (module docstring); the layers follow in
    `_quantize_int4`. `model` is a copy the caller owns."""
    import contextlib
    import io

    from executorch.examples.models.llama.source_transformation.quantize import (
        EmbeddingQuantHandler,
    )

    table = model.embed.weight
    if model.head is None:  # tied: the head gets the table's values, quantized on its own
        model.head = nn.Linear(table.shape[1], table.shape[0], bias=False)
        model.head.weight = nn.Parameter(table.detach().clone())
    width = table.shape[1]
    if width % 2:  # the 4-bit table packs two values a byte
        return model
    holder = nn.Module()  # the token table only: learned positions are small, and stay fp32
    holder.embed = model.embed
    with contextlib.redirect_stdout(io.StringIO()):  # the handler prints each table it quantizes
        EmbeddingQuantHandler(holder, bitwidth=4, packed=True, quantize_with_hqq=False,
                              group_size=INT4_GROUP if width % INT4_GROUP == 0 else None
                              ).quantized_model()
    model.embed = holder.embed
    return model


def _quantize_int8(module: nn.Module, args: tuple, dynamic_shapes: dict | None) -> nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    graph = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False).module()
    prepared = prepare_pt2e(graph, quantizer)
    buffers = {k: v.clone() for k, v in prepared.named_buffers()}
    with filtered_native_log():  # the eager LLM ops log a line per call, as the runtime's do
        prepared(*args)  # dynamic activations need no calibration; one run initializes observers
    # the run mutated state (KV caches); put it back so the program starts as the module did
    for name, value in prepared.named_buffers():
        if name in buffers and value.shape == buffers[name].shape:
            value.copy_(buffers[name])
    return convert_pt2e(prepared)


@contextlib.contextmanager
def _cached_cia_op_table() -> Iterator[None]:
    """Compute torch.export's table of composite-implicit ops once per lowering, not per pass.

    `run_decompositions` rebuilds that table (by walking every registered operator) each time it
    runs, and lowering runs it three times per method: in a 24-method profiling program that
    walk was about a third of the lowering time. Operators are not registered while a lowering
    runs, so one table serves the whole of it. The originals are put back on exit, and when a
    torch version no longer has these private functions nothing is patched.
    """
    try:
        import torch.export.decomp_utils as decomp_utils
        import torch.export.exported_program as exported_program

        original = exported_program._collect_all_valid_cia_ops
        if decomp_utils._collect_all_valid_cia_ops is not original:
            raise AttributeError("the two modules no longer share the function")
    except (ImportError, AttributeError):
        yield
        return
    cached = functools.lru_cache(maxsize=1)(original)
    exported_program._collect_all_valid_cia_ops = decomp_utils._collect_all_valid_cia_ops = cached
    try:
        yield
    finally:
        exported_program._collect_all_valid_cia_ops = original
        decomp_utils._collect_all_valid_cia_ops = original


def _infer_dynamic_views(program: torch.export.ExportedProgram) -> int:
    """Write the one dynamic size of each view as -1 (inferred); return how many changed.

    torch.export records `x.view(1, -1, w)` at a dynamic T as view(x, [1, T, w]) with T symbolic,
    and XNNPACK refuses symbolic view sizes, so every such view ran outside the delegate and split
    its partition (five partitions a layer instead of three). A view with a single unknown size
    is exactly what XNNPACK's reshape infers, so the graph is rewritten to say so.
    """
    views = (torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default)
    changed = 0
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target not in views:
            continue
        shape = list(node.args[1])
        symbolic = [i for i, size in enumerate(shape) if not isinstance(size, int)]
        if len(symbolic) == 1 and -1 not in shape:
            shape[symbolic[0]] = -1
            node.args = (node.args[0], shape, *node.args[2:])
            changed += 1
    if changed:
        program.graph.eliminate_dead_code()
        program.graph_module.recompile()
    return changed


def lower_to_pte(methods: dict[str, Method], quant: str, path: Path,
                 constant_methods: dict[str, Any] | None = None) -> Path:
    """Lower modules to one ExecuTorch program with a method each, delegated to XNNPACK.

    `methods` maps a method name to (module, example args, dynamic_shapes or None); the modules
    are not modified (quantization works on copies). `constant_methods`: methods that return a
    constant (`llm_metadata`). Writes the .pte at `path` and returns it.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import (
        EdgeCompileConfig,
        ExecutorchBackendConfig,
        to_edge_transform_and_lower,
    )

    check_pair("executorch", quant)
    programs = {}
    with torch.no_grad():
        for name, (module, args, dynamic_shapes) in methods.items():
            module = use_llm_ops(copy.deepcopy(module).eval())
            if quant == "int4":
                if isinstance(module, Decoder):
                    module = _quantize_decoder_int4(module)
                module = _quantize_int4(module)
            elif quant == "int8":
                module = _quantize_int8(module, args, dynamic_shapes)
            programs[name] = torch.export.export(module, args, dynamic_shapes=dynamic_shapes,
                                                 strict=False)
            if dynamic_shapes:
                _infer_dynamic_views(programs[name])
    with _cached_cia_op_table():
        edge = to_edge_transform_and_lower(
            programs, partitioner=[XnnpackPartitioner()],
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
            constant_methods=constant_methods)
    program = edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        program.write_to_file(f)
    return path


def decoder_method(model: Decoder, prompt_len: int) -> Method:
    """The decoder's forward with T dynamic in 1..cache_len, traced at T = prompt_len."""
    t = torch.export.Dim("T", min=1, max=model.cache_len)
    prompt_len = max(2, min(prompt_len, model.cache_len))  # T = 1 would specialize the trace
    args = (torch.zeros((1, prompt_len), dtype=torch.long), torch.tensor([0]))
    return model, args, {"tokens": {1: t}, "start": None}


def llm_metadata(model: Decoder) -> dict[str, Any]:
    """The constant methods ExecuTorch's LLM runner (`TextLLMRunner`; `llama_main` and the
    Android demo app on a phone) reads from a .pte to drive its forward(tokens, start_pos): the
    cache length (the most positions a generation may reach), the vocabulary, that the KV cache
    and the SDPA ops live in the program, and that T is dynamic (a prompt is prefilled in one
    call). BOS and EOS ids are left to the tokenizer file beside the program."""
    return {"get_max_seq_len": model.cache_len, "get_max_context_len": model.cache_len,
            "get_vocab_size": model.card.vocab, "use_kv_cache": True,
            "use_sdpa_with_kv_cache": True, "enable_dynamic_shape": True}


def export_executorch(model: Decoder, quant: str, path: Path, *, prompt_len: int) -> Path:
    """Write the decoder as a .pte with one "forward(tokens [1, T], start [1]) -> logits" method
    and the LLM runner's metadata (`llm_metadata`)."""
    model.reset_cache()
    return lower_to_pte({METHOD: decoder_method(model, prompt_len)}, quant, path,
                        constant_methods=llm_metadata(model))


# what ExecuTorch's kernels log on every call in this process and that says nothing to a user:
# custom_sdpa asks the runtime for a scratch allocator the Python runtime does not give, and
# falls back to its own memory
NATIVE_NOISE = ("No temp allocator provided",)


@contextlib.contextmanager
def filtered_native_log() -> Iterator[None]:
    """Run the block with the process's stderr (fd 2, where ExecuTorch's C++ log goes) caught in
    a temporary file; afterwards every line but the NATIVE_NOISE ones is written to stderr, so
    a warning or an error still shows, without a line per kernel call."""
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines(True)
                    if not any(n in line for n in NATIVE_NOISE)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def load_method(artifact: Path, method: str = METHOD) -> Any:
    """A fresh loaded method of a .pte: its mutable buffers (KV cache) start zeroed. Run it
    under `filtered_native_log` (once around a loop of calls, not per call)."""
    from executorch.runtime import Runtime

    load_llm_kernels()
    program = Runtime.get().load_program(Path(artifact))
    return program.load_method(method)


def verify_executorch(model: Decoder, artifact: Path, quant: str) -> dict:
    """Run the .pte with the ExecuTorch runtime here and compare with the fp32 eager model."""
    from merino_mobile.export.verify import compare, fit_prompt, reference_run, run_steps

    prompt, steps = fit_prompt(model)
    ref = reference_run(model, prompt, steps)
    method = load_method(artifact)
    with filtered_native_log():
        got = run_steps(lambda tokens, start: method.execute([tokens, start])[0], prompt,
                        ref["tokens"])
    return compare(ref["logits"], got, quant) | {"runtime": "executorch"}
