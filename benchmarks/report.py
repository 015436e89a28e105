"""One place where the benchmark scripts that report a table of runs write their results:
``benchmarks/results/<name>.json`` (one record per row) and ``<name>.md``, each written
atomically (``labelfix.io.atomic``), and the Markdown echoed to stdout."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from labelfix.io import atomic

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, frame: pd.DataFrame, text: str) -> Path:
    """Write ``frame`` as ``RESULTS/<name>.json`` and ``text`` as ``RESULTS/<name>.md``;
    returns the Markdown path."""
    out = RESULTS / name
    atomic.write_text(out.with_suffix(".json"), json.dumps(frame.to_dict("records"), indent=1) + "\n")
    atomic.write_text(out.with_suffix(".md"), text)
    print(text)
    return out.with_suffix(".md")
