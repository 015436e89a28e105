"""Review of suggested corrections in the FiftyOne App.

- :mod:`labelfix.review.dataset`: build / update the persistent review dataset.
- :mod:`labelfix.review.decisions`: accept / reject suggestions, decisions table and
  RUN/decisions.csv.
- :func:`plugin_dir` / :func:`enable_plugin`: make the labelfix FiftyOne plugin
  (``plugins/labelfix`` in the repository) visible to FiftyOne.

Nothing here imports fiftyone at module import time; :func:`enable_plugin` must run
before fiftyone is imported for the App server (a subprocess) to inherit the setting.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path

from labelfix.errors import LabelfixError

# The MongoDB that the [mongo] extra ships (6.0) is supported but triggers FiftyOne's
# "oldest supported version" notice on every import; a user's own setting still wins.
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

PLUGIN_NAME = "@labelfix/review"

_LAZY = {
    "build_review_dataset": "labelfix.review.dataset",
    "load_review_dataset": "labelfix.review.dataset",
    "default_dataset_name": "labelfix.review.dataset",
    "accept": "labelfix.review.decisions",
    "reject": "labelfix.review.decisions",
    "clear": "labelfix.review.decisions",
    "set_decision": "labelfix.review.decisions",
    "decisions_frame": "labelfix.review.decisions",
    "sync_decisions": "labelfix.review.decisions",
}

__all__ = ["plugin_dir", "enable_plugin", "PLUGIN_NAME", *_LAZY]


def plugin_dir() -> Path:
    """The folder that contains the ``labelfix`` plugin folder: the repository's
    ``plugins/`` next to the package (source checkout, ``pip install -e .``), or
    ``<prefix>/share/labelfix/plugins`` where a regular ``pip install .`` puts it
    (``[tool.setuptools.data-files]`` in pyproject.toml).

    Raises LabelfixError when neither is there.
    """
    import sys

    candidates = [Path(__file__).resolve().parents[2] / "plugins", Path(sys.prefix) / "share" / "labelfix" / "plugins"]
    for root in candidates:
        if (root / "labelfix" / "fiftyone.yml").exists():
            return root
    root = candidates[0]
    raise LabelfixError(
        f"{root}: the labelfix FiftyOne plugin was not found; install labelfix from a clone "
        "with `pip install -e .` (the plugin lives in the repository's plugins/ folder)"
    )


def _contains_plugin(folder: str) -> bool:
    """Whether a ``fiftyone.yml`` naming :data:`PLUGIN_NAME` lies under ``folder``."""
    import yaml

    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if "fiftyone.yml" in files:
            try:
                meta = yaml.safe_load(Path(root, "fiftyone.yml").read_text()) or {}
            except (OSError, yaml.YAMLError):
                meta = {}
            if isinstance(meta, dict) and meta.get("name") == PLUGIN_NAME:
                return True
            dirs[:] = []
    return False


def enable_plugin() -> Path | None:
    """Point FiftyOne's plugins directory at the labelfix plugin.

    - ``FIFTYONE_PLUGINS_DIR`` unset: set it (and ``fo.config.plugins_dir`` if fiftyone
      is already imported) to :func:`plugin_dir`; this process and the App server it
      starts see the plugin.
    - set to a folder that already contains the plugin (e.g. a symlink to
      ``plugins/labelfix``): nothing to do.
    - set to another folder: left alone (your other plugins stay visible) with a warning
      that says how to link the labelfix plugin into it.

    Returns the plugins folder in use, or None when the plugin is not visible.
    """
    current = os.environ.get("FIFTYONE_PLUGINS_DIR")
    if current and _contains_plugin(current):
        return Path(current)
    root = plugin_dir()
    if current:
        warnings.warn(
            f"FIFTYONE_PLUGINS_DIR={current} does not contain the labelfix plugin; link it there with "
            f"`ln -s {root / 'labelfix'} {Path(current) / 'labelfix'}` to get the labelfix operators in the App",
            stacklevel=2,
        )
        return None
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(root)
    if "fiftyone" in sys.modules:
        import fiftyone as fo

        fo.config.plugins_dir = str(root)
    return root


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labelfix.review' has no attribute {name!r}")
