"""The one YAML reader of labelfix (``--config FILE``, ``RUN/config.yaml``): one line naming
the file for text that is not UTF-8, for YAML that does not parse, and for a key given
twice in one mapping (PyYAML keeps the last silently, as JSON readers do; labelfix's JSON
readers refuse it too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from labelfix.errors import LabelfixError, describe_os_error, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":   # `<<: *defaults`: merged by the base class
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                twice = key in seen
            except TypeError:   # an unhashable key: the base class says so
                break
            if twice:
                raise LabelfixError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice (first on line "
                                    f"{seen[key] + 1}); give it once")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """The parsed content of the YAML file ``path`` (None for an empty file), with
    :class:`_UniqueKeyLoader`; every failure is one LabelfixError naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise LabelfixError(describe_os_error(err)) from None
    try:
        text = raw.decode("utf-8-sig")   # -sig: an editor's byte-order mark is not content
    except UnicodeDecodeError as err:
        raise LabelfixError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)   # noqa: S506 - a SafeLoader subclass
    except LabelfixError as err:
        raise LabelfixError(f"{path}: {err}") from None
    except yaml.MarkedYAMLError as err:
        where = f"line {err.problem_mark.line + 1}: " if err.problem_mark is not None else ""
        raise LabelfixError(f"{path}: {where}not valid YAML ({err.problem or first_line(err)})") from None
    except yaml.YAMLError as err:
        raise LabelfixError(f"{path}: not valid YAML ({first_line(err)})") from None
