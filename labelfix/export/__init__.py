"""Exports of a run: the ONNX model (``labelfix.export.onnx``) and torch-free
inference on it (``labelfix.export.predict``).

Nothing is imported eagerly: ``labelfix.export.predict`` must load without torch,
so the torch-side names are resolved on first access (PEP 562). Inference:
``from labelfix.export.predict import predict``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_onnx": "labelfix.export.onnx",
    "export_run": "labelfix.export.onnx",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labelfix.export' has no attribute '{name}'")
