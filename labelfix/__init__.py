"""labelfix: find and fix wrong and missing labels in partially labeled multi-label
image datasets.

The top-level names are imported lazily so that light entry points (``labelfix
predict``, ``labelfix info``) do not pay for, or need, torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "LabelSet": "labelfix.labels",
    "read_labels": "labelfix.io",
    "LabelfixError": "labelfix.errors",
    "find_label_issues": "labelfix.cleaning.api",
    "load_run": "labelfix.run",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labelfix' has no attribute {name!r}")


def __dir__() -> list[str]:   # the lazy names too (tab completion, help(labelfix))
    return sorted({*__all__, *(n for n in globals() if n.startswith("__"))})
