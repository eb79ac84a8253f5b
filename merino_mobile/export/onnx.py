"""ONNX export: the decoder with its KV cache as explicit inputs and outputs, run by ONNX Runtime.

An ONNX graph holds no mutable state, so the decoder's cache buffers cannot live inside it.
`to_onnx` finds the buffers a module's forward writes (the KV caches) and exports a functional
twin of the module instead: the buffers become inputs `past.<buffer>` and their updated values
outputs `present.<buffer>`, after the module's own inputs and outputs. The caller owns the cache
and feeds each step's `present` back as the next step's `past`:

    (tokens [1, T], start [1], past.caches.0.k, ...) -> (logits [1, vocab], present.caches.0.k, ...)

T is dynamic, so one graph serves prefill (T = prompt length) and decode (T = 1).

Quantization, as ONNX Runtime runs it on a CPU:
- fp32: none.
- int8: `quantize_dynamic`: int8 per-channel weights (7-bit range, see `_quantize`) of MatMul,
  Gemm and the embedding Gather; activations quantized at run time (DynamicQuantizeLinear +
  MatMulInteger).
- int4: `MatMulNBitsQuantizer`: 4-bit symmetric block-wise weights (blocks of 32) of every MatMul
  with a constant weight, executed by the `MatMulNBits` contrib op.
"""

from __future__ import annotations

import inspect
import json
import logging
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from merino_mobile.accounting import INT4_GROUP
from merino_mobile.errors import UserError
from merino_mobile.formats import check_pair
from merino_mobile.model import Decoder

PAST, PRESENT = "past.", "present."
OPSET = 18
PROTOBUF_LIMIT = 2**31 - 2**24  # an ONNX file is one protobuf message (< 2 GiB), graph included


def mutated_buffers(module: nn.Module, example_args: tuple) -> list[str]:
    """Names of the buffers `module(*example_args)` writes in place, in registration order.

    Read from the tensors' version counters (bumped by every in-place write); the buffers' values
    are restored afterwards, so the module is left as it was found.
    """
    buffers = dict(module.named_buffers())
    saved = {name: b.clone() for name, b in buffers.items()}
    before = {name: b._version for name, b in buffers.items()}
    with torch.no_grad():
        module(*example_args)
        written = [name for name, b in buffers.items() if b._version != before[name]]
        for name in written:
            buffers[name].copy_(saved[name])
    return written


class Functional(nn.Module):
    """`module` with the buffers `names` passed in and returned, not mutated: ONNX has no state.

    forward(*args, *states) -> (*outputs, *new_states); the module's own buffers are untouched.
    """

    def __init__(self, module: nn.Module, names: list[str], n_args: int) -> None:
        super().__init__()
        self.module, self.names, self.n_args = module, list(names), n_args

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # clones: the module writes into these in place; export turns the writes into pure ops
        states = [s.clone() for s in args[self.n_args:]]
        out = torch.func.functional_call(self.module, dict(zip(self.names, states, strict=True)),
                                         args[: self.n_args], strict=False, tie_weights=True)
        outs = out if isinstance(out, tuple) else (out,)
        return (*outs, *states)


def _positional(module: nn.Module, example_args: tuple, dynamic_shapes) -> list:
    """dynamic_shapes as one entry per example arg (accepts torch.export's dict form too)."""
    if dynamic_shapes is None:
        return [None] * len(example_args)
    if isinstance(dynamic_shapes, dict):
        names = list(inspect.signature(module.forward).parameters)[: len(example_args)]
        unknown = set(dynamic_shapes) - set(names)
        if unknown:
            raise ValueError(f"dynamic_shapes names {sorted(unknown)} are not arguments of "
                             f"{type(module).__name__}.forward {names}")
        return [dynamic_shapes.get(n) for n in names]
    return list(dynamic_shapes)


def _quiet_export(fn, *args, **kwargs):
    """Run a torch.onnx step without its progress prints and warnings (the CLI prints JSON)."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def to_onnx(module: nn.Module, example_args: tuple, quant: str, path: Path, *,
            dynamic_shapes=None, input_names=None, output_names=None) -> Path:
    """Export `module` traced at `example_args` to an ONNX file at `path`, quantized as `quant`.

    Buffers the forward writes become `past.<name>` inputs and `present.<name>` outputs after the
    module's own (see the module docstring). `dynamic_shapes` follows torch.export (one entry per
    example arg, or a dict by argument name); `input_names`/`output_names` name the module's own
    inputs and outputs. Returns `path`.
    """
    import onnx

    check_pair("onnx", quant)
    path = Path(path)
    module = module.eval()
    example_args = tuple(example_args)
    states = mutated_buffers(module, example_args)
    shapes = _positional(module, example_args, dynamic_shapes)
    buffers = dict(module.named_buffers())
    if states:
        traced: nn.Module = Functional(module, states, len(example_args))
        args = (*example_args, *(torch.zeros_like(buffers[n]) for n in states))
        # a *args forward takes its dynamic shapes as one tuple
        export_shapes = (tuple(shapes) + (None,) * len(states),)
    else:
        traced, args, export_shapes = module, example_args, tuple(shapes)
    if all(s is None for s in shapes):
        export_shapes = None
    with torch.no_grad():
        program = torch.export.export(traced, args, dynamic_shapes=export_shapes, strict=False)
    n_out = len([s for s in program.graph_signature.user_outputs]) - len(states)
    in_names = list(input_names or [f"input_{i}" for i in range(len(example_args))])
    out_names = list(output_names or [f"output_{i}" for i in range(n_out)])
    if len(in_names) != len(example_args) or len(out_names) != n_out:
        raise ValueError(f"{len(in_names)} input names for {len(example_args)} inputs, "
                         f"{len(out_names)} output names for {n_out} outputs")
    in_names += [PAST + n for n in states]
    out_names += [PRESENT + n for n in states]
    onnx_program = _quiet_export(torch.onnx.export, program, dynamo=True, opset_version=OPSET,
                                 input_names=in_names, output_names=out_names, verbose=False)
    model = onnx_program.model_proto
    got_inputs = [i.name for i in model.graph.input]
    if got_inputs != in_names:
        # the exporter drops inputs it finds unused; a dropped cache would silently lose state
        raise RuntimeError(f"ONNX graph inputs {got_inputs} differ from the expected {in_names}")
    _constant_weights(model, gemm_to_matmul=quant == "int4")
    _strip_debug_info(model)
    onnx.helper.set_model_props(model, {"merino.quant": quant,
                                        "merino.state": json.dumps(states)})
    path.parent.mkdir(parents=True, exist_ok=True)
    if quant == "fp32":
        onnx.save(model, str(path))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            onnx.save(model, str(fp32))
            _quantize(fp32, quant, path)
    return path


def _constant_weights(model, gemm_to_matmul: bool) -> None:
    """Give every MatMul a constant weight, stored once, so quantizers can find and share it.

    The exporter writes a linear layer as MatMul(x, Transpose(W)) (or folds W.T into a new
    constant at every use) and a tied head as Gemm(x, W, transB=1). Quantizers only compress a
    MatMul whose weight is an initializer, and a shared layer run depth times would otherwise be
    stored depth times, undoing the card's weight sharing on disk. So: Transpose(initializer)
    becomes one transposed initializer, identical initializers are merged, unused ones dropped,
    and with `gemm_to_matmul` a Gemm on a constant becomes MatMul (+ Add): only for int4, as it
    stores a tied head's transposed copy of the embedding (the int4 quantizer ignores Gemm).
    """
    import hashlib

    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    transposed: dict[str, str] = {}
    rename: dict[str, str] = {}

    def transpose_of(name: str) -> str:
        if name not in transposed:
            array = np.ascontiguousarray(numpy_helper.to_array(inits[name]).T)
            graph.initializer.append(numpy_helper.from_array(array, name + ".T"))
            inits[name + ".T"] = graph.initializer[-1]
            transposed[name] = name + ".T"
        return transposed[name]

    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type == "Transpose" and node.input[0] in inits
                and len(inits[node.input[0]].dims) == 2 and attrs.get("perm", [1, 0]) == [1, 0]):
            rename[node.output[0]] = transpose_of(node.input[0])
            continue
        if (gemm_to_matmul and node.op_type == "Gemm" and node.input[1] in inits
                and not attrs.get("transA", 0)
                and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0):
            weight = transpose_of(node.input[1]) if attrs.get("transB", 0) else node.input[1]
            product = node.output[0] + ".matmul" if len(node.input) > 2 else node.output[0]
            nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product],
                                          name=node.name + ".matmul"))
            if len(node.input) > 2:
                nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                              name=node.name + ".bias"))
            continue
        nodes.append(node)

    first: dict[tuple, str] = {}
    for init in graph.initializer:
        data = numpy_helper.to_array(init).tobytes()
        key = (init.data_type, tuple(init.dims), hashlib.sha256(data).hexdigest())
        rename.setdefault(init.name, first.setdefault(key, init.name))
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used and rename[i.name] == i.name]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _strip_debug_info(model) -> None:
    """Drop per-node Python stack traces: a third of a tiny model's file, useless on a phone."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def _quantize(src: Path, quant: str, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if quant == "int8":
        # reduce_range (7-bit weight range): x86 without VNNI multiplies u8 x s8 pairs into
        # saturating int16 sums; full-range weights there lost cosine 0.9996 -> 0.985 on a tiny
        # decoder. ARM runs it the same, so one artifact is right on both.
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True)
        return
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # Gather too: the embedding table is the largest matrix of a small model
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=INT4_GROUP,
                                     is_symmetric=True, op_types_to_quantize=("MatMul", "Gather"))
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def decoder_args(model: Decoder, prompt_len: int) -> tuple[tuple, dict]:
    """Example (tokens, start) at T = prompt_len and T's dynamic range 1..cache_len."""
    t = torch.export.Dim("T", min=1, max=model.cache_len)
    prompt_len = max(2, min(prompt_len, model.cache_len))  # T = 1 would specialize the trace
    args = (torch.zeros((1, prompt_len), dtype=torch.long), torch.tensor([0]))
    return args, {"tokens": {1: t}, "start": None}


def export_onnx(model: Decoder, quant: str, path: Path, *, prompt_len: int) -> Path:
    """Write the decoder as ONNX: (tokens, start, past caches) -> (logits, present caches)."""
    weight_bytes = 4 * sum(p.numel() for p in model.parameters())
    if weight_bytes >= PROTOBUF_LIMIT:
        raise UserError(f"card {model.card.name!r} has {weight_bytes / 1e9:.1f} GB of fp32 "
                        "weights; an ONNX file holds at most 2 GB (protobuf limit; external "
                        "weight files are not supported here): export it with --format executorch")
    model.reset_cache()
    args, shapes = decoder_args(model, prompt_len)
    return to_onnx(model, args, quant, path, dynamic_shapes=shapes,
                   input_names=["tokens", "start"], output_names=["logits"])


def onnx_session(artifact: Path):
    """An ONNX Runtime CPU session of `artifact`; a file that is not a model is a UserError."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors for unreadable files
        raise UserError(f"ONNX Runtime cannot load {artifact}: {e}") from None


def verify_onnx(model: Decoder, artifact: Path, quant: str) -> dict:
    """Run the ONNX file with ONNX Runtime here, cache fed back, and compare with eager fp32."""
    import numpy as np
    import onnxruntime as ort

    from merino_mobile.export.verify import compare, fit_prompt, reference_run, run_steps

    session = onnx_session(artifact)
    past = [i for i in session.get_inputs() if i.name.startswith(PAST)]
    outputs = [o.name for o in session.get_outputs()]
    cache = {i.name: np.zeros(i.shape, dtype=np.float32) for i in past}

    def step(tokens: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        feeds = {"tokens": tokens.numpy(), "start": start.numpy(), **cache}
        values = dict(zip(outputs, session.run(outputs, feeds), strict=True))
        for name in cache:
            cache[name] = values[PRESENT + name[len(PAST):]]
        return torch.from_numpy(values["logits"])

    prompt, steps = fit_prompt(model)
    ref = reference_run(model, prompt, steps)
    got = run_steps(step, prompt, ref["tokens"])
    return compare(ref["logits"], got, quant) | {"runtime": f"onnxruntime {ort.__version__}",
                                                 "cache_inputs": len(past)}
