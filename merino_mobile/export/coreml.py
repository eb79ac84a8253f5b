"""Core ML export: a stateful .mlpackage (the KV cache is Core ML state), fp16, compressed weights.

torch.export (T dynamic) -> ATen graph -> `scatter_cache_writes` -> coremltools -> mlprogram for
iOS 18 / macOS 15, the first Core ML with state: the decoder's mutated cache buffers become
`MLState`s that Core ML keeps between predictions, so the app calls

    predict({"tokens": int32 [1, T], "start": int32 [1]}, state) -> {"logits": fp16 [1, vocab]}

with T = prompt length to prefill, then T = 1 per generated token. Compute precision is fp16
(Core ML states are fp16 only). Weight compression (coremltools.optimize.coreml), every weight of
more than 2048 elements:
- fp16: none;
- int8: linear symmetric int8, one scale per output channel -> constexpr_blockwise_shift_scale;
- int4: 4-bit palettization, a 16-entry k-means lookup table per weight -> constexpr_lut_to_dense.

Prediction needs macOS. Elsewhere `verify_coreml` validates the package structurally (inputs,
outputs, states, op types, weight dtypes after compression) and says that parity was skipped.
"""

from __future__ import annotations

import logging
import math
import platform
import warnings
from collections import Counter
from pathlib import Path

import torch

from merino_mobile.errors import UserError
from merino_mobile.formats import check_pair
from merino_mobile.model import Decoder

# the compression op each quantization leaves in the program, and the dtype of its weights
COMPRESSION = {"int8": ("constexpr_blockwise_shift_scale", "INT8"),
               "int4": ("constexpr_lut_to_dense", "UINT4")}
# coremltools' default weight_threshold: it compresses tensors of more elements, keeps these fp16
WEIGHT_MIN = 2048
# where a compression op keeps its compressed weight; int tensors are masks and positions
WEIGHT_INPUT = {"constexpr_blockwise_shift_scale": "data", "constexpr_lut_to_dense": "indices",
                "constexpr_affine_dequantize": "quantized_data"}
INDEX_DTYPES = ("INT32", "INT64", "BOOL")


def _coremltools():
    """coremltools, imported without its chatter (version nags, missing macOS runtime)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            import coremltools as ct
        finally:
            logging.disable(level)
    return ct


def coreml_prediction_available() -> tuple[bool, str]:
    """Whether this machine can run Core ML predictions, and why not."""
    if platform.system() != "Darwin":
        return False, f"Core ML prediction needs macOS; this is {platform.system()}"
    try:
        _coremltools()
        from coremltools import libcoremlpython  # noqa: F401  the native runtime
    except ImportError:
        return False, "coremltools has no native Core ML runtime in this installation"
    return True, f"macOS {platform.mac_ver()[0]}"


def scatter_cache_writes(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Rewrite cache writes `x[:, :, pos] = v` into a form coremltools converts, in place.

    The decoder writes positions `pos` [T] along the cache's time axis (index_put with leading
    whole slices, or index_copy). coremltools only converts such a write for one scalar position,
    so each becomes: move the indexed axis first, index_put along axis 0 (Core ML scatter_nd with
    a dynamic T), move it back. The node keeps its name, so the buffer-mutation outputs of the
    program's signature still point at it.
    """
    aten = torch.ops.aten
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.target is aten.index_put.default:
            x, indices, values = node.args[:3]
            if len(node.args) > 3 and node.args[3]:
                continue  # accumulate: not a cache write
            axes = [i for i, index in enumerate(indices) if index is not None]
            if len(axes) != 1 or axes[0] == 0:
                continue
            axis, index = axes[0], indices[axes[0]]
        elif node.target is aten.index_copy.default:
            x, axis, index, values = node.args
        else:
            continue
        rank = x.meta["val"].dim()
        axis %= rank
        order = [axis] + [i for i in range(rank) if i != axis]
        back = [order.index(i) for i in range(rank)]
        with graph.inserting_before(node):
            # values broadcast against the indexed shape; give them its rank before permuting
            for _ in range(rank - values.meta["val"].dim()):
                values = graph.call_function(aten.unsqueeze.default, (values, 0))
            moved = graph.call_function(aten.permute.default, (x, order))
            moved_values = graph.call_function(aten.permute.default, (values, order))
            written = graph.call_function(aten.index_put.default, (moved, [index], moved_values))
        node.target, node.args, node.kwargs = aten.permute.default, (written, back), {}
    graph.lint()
    program.graph_module.recompile()
    return program


def _exported(model: Decoder, prompt_len: int) -> torch.export.ExportedProgram:
    from merino_mobile.export.executorch import decoder_method

    module, args, dynamic_shapes = decoder_method(model, prompt_len)
    with torch.no_grad():
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    # ATen dialect (no core-ATen decomposition) is what coremltools converts best
    return scatter_cache_writes(program.run_decompositions({}))


def _compress(mlmodel, quant: str):
    _coremltools()
    from coremltools.optimize.coreml import (
        OpLinearQuantizerConfig,
        OpPalettizerConfig,
        OptimizationConfig,
        linear_quantize_weights,
        palettize_weights,
    )

    if quant == "int8":
        config = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                         granularity="per_channel", weight_threshold=WEIGHT_MIN)
        return linear_quantize_weights(mlmodel, OptimizationConfig(global_config=config))
    # one LUT per tensor: per-group LUTs cost a k-means per group (minutes for a 100M model)
    config = OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_tensor",
                                weight_threshold=WEIGHT_MIN)
    return palettize_weights(mlmodel, OptimizationConfig(global_config=config))


def export_coreml(model: Decoder, quant: str, path: Path, *, prompt_len: int) -> Path:
    """Write the decoder as a stateful Core ML .mlpackage at `path` (see the module docstring)."""
    check_pair("coreml", quant)
    ct = _coremltools()
    model.reset_cache()
    program = _exported(model, prompt_len)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(program, convert_to="mlprogram",
                             minimum_deployment_target=ct.target.iOS18,
                             compute_precision=ct.precision.FLOAT16,
                             outputs=[ct.TensorType(name="logits")], skip_model_load=True)
        if quant != "fp16":
            mlmodel = _compress(mlmodel, quant)
    mlmodel.short_description = f"{model.card.name} decoder, {quant} weights, KV cache as state"
    mlmodel.user_defined_metadata.update({"merino.card": model.card.name, "merino.quant": quant,
                                          "merino.cache_len": str(model.cache_len)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(path))
    return path


def _tensor(type_) -> tuple[list[int], str]:
    from coremltools.proto import MIL_pb2

    tensor = type_.tensorType
    return ([d.constant.size for d in tensor.dimensions], MIL_pb2.DataType.Name(tensor.dataType))


def inspect_package(artifact: Path) -> dict:
    """What a .mlpackage declares, read from its spec without loading it (works on Linux).

    inputs/outputs/states: name -> [shape, dtype] (tokens' shape is its upper bound);
    ops: op type counts of the main function; weights: dtype -> elements of the weight matrices
    (constant tensors of rank >= 2 and more than WEIGHT_MIN elements, compressed or not; vectors
    such as biases may stay fp16 and are not counted).
    """
    ct = _coremltools()
    from coremltools.proto import FeatureTypes_pb2

    try:
        spec = ct.models.MLModel(str(artifact), skip_model_load=True).get_spec()
    except Exception as e:  # coremltools raises bare Exceptions for unreadable packages
        raise UserError(f"{artifact} is not a readable Core ML package: {e}") from None
    if not spec.HasField("mlProgram"):
        raise UserError(f"{artifact} is not an ML program (a neural network model?)")

    def array(feature) -> list:
        a = feature.type.multiArrayType if feature.type.HasField("multiArrayType") else \
            feature.type.stateType.arrayType
        ranges = list(a.shapeRange.sizeRanges)
        shape = [r.upperBound for r in ranges] if ranges else list(a.shape)
        return [shape, FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(a.dataType)]

    function = spec.mlProgram.functions["main"]
    operations = function.block_specializations[function.opset].operations
    weights: Counter = Counter()
    for op in operations:
        if op.type == "const":
            value = op.attributes["val"]
        elif op.type in WEIGHT_INPUT and op.inputs[WEIGHT_INPUT[op.type]].arguments[0].HasField(
                "value"):
            value = op.inputs[WEIGHT_INPUT[op.type]].arguments[0].value
        else:
            continue
        shape, dtype = _tensor(value.type)
        if len(shape) >= 2 and math.prod(shape) > WEIGHT_MIN and dtype not in INDEX_DTYPES:
            weights[dtype] += math.prod(shape)
    return {
        "spec_version": spec.specificationVersion,
        "opset": function.opset,
        "inputs": {f.name: array(f) for f in spec.description.input},
        "outputs": {f.name: array(f) for f in spec.description.output},
        "states": {f.name: array(f) for f in spec.description.state},
        "ops": dict(Counter(op.type for op in operations)),
        "weights": dict(weights),
    }


def structure_problems(model: Decoder, info: dict, quant: str) -> list[str]:
    """Every way the package's declared structure differs from what `model` and `quant` need."""
    problems = []
    want_in = {"tokens": [[1, model.cache_len], "INT32"], "start": [[1], "INT32"]}
    if info["inputs"] != want_in:
        problems.append(f"inputs {info['inputs']} != {want_in}")
    want_out = {"logits": [[1, model.card.vocab], "FLOAT16"]}
    if info["outputs"] != want_out:
        problems.append(f"outputs {info['outputs']} != {want_out}")
    want_states = {name.replace(".", "_"): [list(b.shape), "FLOAT16"]
                   for name, b in model.named_buffers() if name.startswith("caches.")}
    if info["states"] != want_states:
        problems.append(f"states {sorted(info['states'])} != the {len(want_states)} KV caches "
                        f"{sorted(want_states)} (or their shapes differ)")
    writes = info["ops"].get("write_state", 0)
    if writes != len(want_states):
        problems.append(f"{writes} write_state ops for {len(want_states)} states")
    op, dtype = COMPRESSION.get(quant, (None, "FLOAT16"))
    if op is not None and not info["ops"].get(op):
        problems.append(f"no {op} op: the weights were not compressed to {quant}")
    if set(info["weights"]) != {dtype}:
        problems.append(f"weights stored as {info['weights']} (elements by dtype); "
                        f"{quant} stores them all as {dtype}")
    return problems


def verify_coreml(model: Decoder, artifact: Path, quant: str) -> dict:
    """Validate the package's structure; compare predictions with eager fp32 where Core ML runs."""
    info = inspect_package(artifact)
    problems = structure_problems(model, info, quant)
    result = {"quant": quant, "checked": "structure", "structure": info, "problems": problems,
              "passed": not problems}
    available, why = coreml_prediction_available()
    if not available:
        return result | {"prediction_parity": f"skipped: {why}"}
    parity = _prediction_parity(model, artifact, quant)
    return result | {"checked": "structure and prediction", "prediction_parity": parity,
                     "passed": not problems and parity["passed"]}


def _prediction_parity(model: Decoder, artifact: Path, quant: str) -> dict:
    """macOS only, UNTESTED on this project's Linux CI: run the package, compare with eager."""
    import numpy as np

    from merino_mobile.export.verify import compare, fit_prompt, reference_run, run_steps

    ct = _coremltools()
    mlmodel = ct.models.MLModel(str(artifact), compute_units=ct.ComputeUnit.CPU_ONLY)
    state = mlmodel.make_state()

    def step(tokens: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        out = mlmodel.predict({"tokens": tokens.numpy().astype(np.int32),
                               "start": start.numpy().astype(np.int32)}, state=state)
        return torch.from_numpy(np.asarray(out["logits"], dtype=np.float32))

    prompt, steps = fit_prompt(model)
    ref = reference_run(model, prompt, steps)
    return compare(ref["logits"], run_steps(step, prompt, ref["tokens"]), quant)
