"""Exporters: one module per format (executorch.py, onnx.py, coreml.py) named by the formats
table (`merino_mobile.formats`), the shared build-verify-write stage (build.py) and the
verification helpers (verify.py)."""

from merino_mobile.export.build import (
    DEFAULT_PROMPT_LEN,
    ExportResult,
    disk_size,
    export,
    reusable_export,
)
from merino_mobile.formats import FORMATS, check_pair

__all__ = ["DEFAULT_PROMPT_LEN", "FORMATS", "ExportResult", "check_pair", "disk_size", "export",
           "reusable_export"]
