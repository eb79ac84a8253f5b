"""Input files for ExecuTorch's executor_runner, sized to what a .pte was exported for.

executor_runner reads each input from a raw file (`--inputs`) sized to the method's upper-bound
shape, and a dynamic-shape method run below its bound also needs `--input_shapes`. This module
reads those bounds from the .pte with ExecuTorch's runtime here (`pte_input_bounds`), makes the
very input arrays the host worker feeds (`input_files`), and pads them to the bounds
(`fit_inputs`). Nothing here is phone-specific: any device that drives executor_runner can use it.
"""

from __future__ import annotations

import math
from pathlib import Path

from merino_mobile.device.base import MethodSpec
from merino_mobile.errors import UserError


def pte_input_bounds(artifact: Path) -> dict[str, list[tuple[int, ...] | None]]:
    """Upper-bound shape of each input of each method of a .pte (None: not a tensor), read with
    ExecuTorch's runtime here. executor_runner sizes its inputs from these bounds; a smaller
    shape needs --input_shapes and an input file padded to the bound."""
    try:
        import torch  # noqa: F401  (the runtime extension needs libtorch loaded)
        from executorch.extension.pybindings import _C

        program = _C._load_program(str(artifact))
    except Exception:
        return {}  # not loadable here: the runner on the phone will say why
    bounds: dict[str, list[tuple[int, ...] | None]] = {}
    for i in range(program.num_methods()):
        name = program.get_method_name(i)
        meta = program.method_meta(name)
        shapes: list[tuple[int, ...] | None] = []
        for j in range(meta.num_inputs()):
            try:
                shapes.append(tuple(meta.input_tensor_meta(j).sizes()))
            except Exception:
                shapes.append(None)
        bounds[name] = shapes
    return bounds


def fit_inputs(method: MethodSpec, data: list[bytes],
               bounds: list[tuple[int, ...] | None] | None) -> tuple[list[bytes], list[str]]:
    """Input files sized to the method's bounds, and the --input_shapes entries ('' = bound).

    A smaller (dynamic) shape keeps its values first and is zero-padded to the bound, as
    executor_runner reads a bound-sized buffer and then resizes the tensor over its start."""
    files, shapes = [], []
    for j, (spec, raw) in enumerate(zip(method.inputs, data, strict=True)):
        bound = bounds[j] if bounds and j < len(bounds) else None
        if bound is None or tuple(spec.shape) == bound:
            files.append(raw)
            shapes.append("")
            continue
        if len(bound) != len(spec.shape) or any(s > b for s, b in zip(spec.shape, bound,
                                                                       strict=True)):
            raise UserError(f"input {j} of {method.name} has shape {list(spec.shape)}, outside "
                            f"the exported bound {list(bound)}")
        itemsize = len(raw) // max(1, math.prod(spec.shape))
        files.append(raw + bytes(itemsize * math.prod(bound) - len(raw)))
        shapes.append("x".join(map(str, spec.shape)))
    return files, shapes


def input_files(method: MethodSpec) -> list[bytes]:
    """Raw little-endian bytes of each input, as executor_runner's --inputs reads them: the very
    arrays the host worker feeds (worker.make_inputs), so phone and host run the same data."""
    from merino_mobile.device.worker import make_inputs

    return [a.astype(a.dtype.newbyteorder("<")).tobytes() for a in make_inputs(method.inputs)]
