"""The shape of the package: one formats table, no import circles, nothing imports the CLI,
package `__init__` files only re-export, and the small pieces every layer shares (the target,
plain progress lines) behave as documented."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from merino_mobile.errors import UserError
from merino_mobile.formats import (
    FORMATS,
    PROFILED_RUNTIMES,
    check_pair,
    check_runtime_quant,
    for_artifact,
    for_runtime,
    get_format,
)
from merino_mobile.progress import LineProgress
from merino_mobile.target import resolve_target
from merino_mobile.workspace import Workspace

PACKAGE = Path(__file__).parents[1] / "merino_mobile"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The merino_mobile modules a file imports (at module level, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("merino_mobile"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("merino_mobile")}
    return out


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_nothing_below_the_cli_imports_it():
    for name, path in MODULES.items():
        if name in ("merino_mobile.cli", "merino_mobile.__main__"):
            continue
        assert "merino_mobile.cli" not in _imports(path, top_level_only=False), name


def test_module_level_imports_have_no_circle():
    graph = {name: {m for m in _imports(path, top_level_only=True) if m in MODULES}
             for name, path in MODULES.items()}
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in graph[n]:
            if state.get(m) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack + [n, m]))
            if m not in state:
                visit(m, stack + [n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


def test_package_inits_only_re_export():
    for path in PACKAGE.rglob("__init__.py"):
        for node in ast.parse(path.read_text()).body:
            ok = isinstance(node, ast.Import | ast.ImportFrom) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) or (
                isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(
                    t, ast.Name)] in (["__all__"], ["__version__"]))
            assert ok, f"{path}:{node.lineno} holds logic; move it into a module"


def test_the_formats_table_is_the_one_source():
    assert set(FORMATS) == {"executorch", "coreml", "onnx", "gguf"}
    assert set(PROFILED_RUNTIMES) == {"executorch", "onnxruntime"}
    for f in FORMATS.values():
        assert for_runtime(f.runtime) is f and get_format(f.name) is f
        assert for_artifact(Path("x") / f.artifact) is f and f.suffix == Path(f.artifact).suffix
        export_fn, verify_fn = (None, None) if f.name == "coreml" else f.functions()
        if export_fn is not None:
            assert callable(export_fn) and callable(verify_fn)
        assert set(f.toolchain()) == set(f.packages)
    assert check_pair("onnx", "int4").runtime == "onnxruntime"
    with pytest.raises(UserError, match="coreml does not support quantization 'fp32'"):
        check_pair("coreml", "fp32")
    with pytest.raises(UserError, match="unknown export format 'tflite'"):
        get_format("tflite")
    with pytest.raises(UserError, match="unknown runtime 'coreml'; choose one of executorch"):
        check_runtime_quant("coreml", "fp16", profiled=True)
    with pytest.raises(UserError, match=r"unknown artifact type.*\.pte \(executorch\)"):
        for_artifact(Path("model.tflite"))


def test_the_target_is_resolved_once_with_the_device_s_first_runtime(tmp_path, monkeypatch):
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "ortonly.toml").write_text(
        'name = "ortonly"\ntransport = "local"\nruntimes = ["onnxruntime"]\n')
    ws = Workspace.resolve(tmp_path)
    t = resolve_target(ws, "ortonly")
    assert (t.name, t.format.name, t.runtime, t.quant) == ("ortonly", "onnx", "onnxruntime",
                                                          "int8")
    assert t.using(get_format("executorch"), "fp32").runtime == "executorch"
    with pytest.raises(UserError, match="no latency table for device 'ortonly'"):
        t.table()
    with pytest.raises(UserError, match="cannot run executorch artifacts: it has onnxruntime"):
        t.using(get_format("executorch"), "int8").open()
    monkeypatch.setenv("MERINO_MOBILE_DEVICE", "ortonly")
    assert resolve_target(ws).name == "ortonly"
    with pytest.raises(UserError, match="unknown export format 'pte'"):
        resolve_target(ws, "ortonly", "pte")


def test_line_progress_prints_phase_starts_a_line_a_period_and_the_end():
    lines: list[str] = []
    now = [0.0]
    p = LineProgress(lines.append, every_s=10.0, clock=lambda: now[0])
    p("exporting 3 programs", 0, 3)  # a phase starts: one line
    now[0] = 4.0
    p("exported a", 1, 3)  # within the period: quiet
    now[0] = 12.0
    p("exported b", 2, 3)  # the period has passed: a line with an estimate
    now[0] = 13.0
    p("exported c", 3, 3)  # done: always a line
    p("layer 64", 0, 20)  # the next phase has its own total
    assert lines == ["[0/3] exporting 3 programs (elapsed 0:00)",
                     "[2/3] exported b (elapsed 0:12, eta 0:06)",
                     "[3/3] exported c (elapsed 0:13)",
                     "[0/20] layer 64 (elapsed 0:00)"]
