"""Kill-safety harness: SIGKILL a labelfix command at a random moment and check the damage.

What "kill safe" means here (docs/reliability.md):
- inputs are byte-identical afterwards (sha256 before / after);
- every output file is either absent or complete and valid for its type: ``.json``
  parses (and a COCO-looking JSON loads with pycocotools), ``.npy`` loads memory-mapped
  with the expected shape, ``.csv`` parses with a constant number of fields per row,
  ``.yaml`` parses, ``.pt`` loads with ``torch.load(weights_only=True)``, ``.onnx``
  loads with ``onnx.load``, ``.png`` verifies with PIL;
- no temporary file ever carries a final name. Temporaries of
  :mod:`labelfix.io.atomic` (``.<name>.<random>.tmp``) and a stale
  ``.labelfix.lock`` may remain after a SIGKILL (nothing can remove them); they are
  counted, not failed, and the next command ignores / takes them over;
- optionally, the same command run again to completion succeeds (recovery).

Core API: :func:`kill_once` (one run), :func:`kill_campaign` (many runs with random
kill times, a summary dict with counts of runs, kills, corrupted files).
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from labelfix.errors import first_line

# the CLI of this interpreter, whether or not the console script is installed
LABELFIX = [sys.executable, "-c", "import sys; from labelfix.cli import main; sys.argv[0] = 'labelfix'; main()"]
TEMP_RE = re.compile(r"^\..+\.tmp$")  # labelfix.io.atomic temporaries
LOCK_RE = re.compile(r"^\.labelfix\.lock$")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def snapshot(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """sha256 of every file in ``paths`` (folders walked recursively)."""
    out: dict[str, str] = {}
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for f in files:
            out[str(f)] = sha256_file(f)
    return out


# ---------------------------------------------------------------------------- validators
def _check_json(path: Path) -> None:
    with open(path, "rb") as fh:
        data = json.load(fh)
    if isinstance(data, dict) and "images" in data and "categories" in data:
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()


def _check_csv(path: Path) -> None:
    import pandas as pd

    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError("empty CSV (not even a header)")
    width = len(rows[0])
    bad = [i for i, r in enumerate(rows) if len(r) != width]
    if bad:
        raise ValueError(f"row {bad[0] + 1} has {len(rows[bad[0]])} fields, header has {width}")
    pd.read_csv(path, dtype=str, keep_default_na=False)


def _check_npy(path: Path, shape: tuple | None) -> None:
    import numpy as np

    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"shape {arr.shape}, expected {tuple(shape)}")
    if arr.size:
        np.asarray(arr[-1])  # the last row must be readable


def _check_pt(path: Path) -> None:
    import torch

    torch.load(path, map_location="cpu", weights_only=True)


def _check_onnx(path: Path) -> None:
    import onnx

    onnx.load(str(path))


def _check_yaml(path: Path) -> None:
    import yaml

    yaml.safe_load(path.read_text(encoding="utf-8"))


def _check_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        im.verify()


VALIDATORS: dict[str, Callable[[Path], None]] = {
    ".json": _check_json, ".csv": _check_csv, ".pt": _check_pt, ".onnx": _check_onnx,
    ".yaml": _check_yaml, ".yml": _check_yaml, ".png": _check_png,
}


def validate_file(path: Path, expected_shapes: dict[str, tuple] | None = None, rel: str | None = None) -> str | None:
    """None when ``path`` is complete and valid for its type, else the reason.

    ``expected_shapes`` maps glob patterns of paths relative to the output folder (``rel``)
    to the shape a ``.npy`` there must have. Unknown file types pass (nothing to check).
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            shape = None
            for pat, shp in (expected_shapes or {}).items():
                if fnmatch.fnmatch(rel or path.name, pat):
                    shape = shp
                    break
            _check_npy(path, shape)
        elif suffix in VALIDATORS:
            VALIDATORS[suffix](path)
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        return f"{type(e).__name__}: {first_line(e)}"
    return None


def scan_outputs(out_dir: Path, expected_shapes: dict[str, tuple] | None = None,
                 ignore: set[str] = frozenset()) -> dict:
    """Classify every file under ``out_dir``: checked, corrupted (path -> reason),
    leftover temporaries and stale locks. ``ignore``: relative paths not to check
    (pre-existing inputs that live inside the output folder)."""
    res = {"checked": 0, "corrupted": {}, "leftover_temps": [], "stale_locks": []}
    if not out_dir.exists():
        return res
    for f in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        rel = str(f.relative_to(out_dir))
        if rel in ignore:
            continue
        if TEMP_RE.match(f.name):
            res["leftover_temps"].append(rel)
            continue
        if LOCK_RE.match(f.name):
            res["stale_locks"].append(rel)
            continue
        res["checked"] += 1
        why = validate_file(f, expected_shapes, rel)
        if why:
            res["corrupted"][rel] = why
    return res


# ----------------------------------------------------------------------------- one run
@dataclass
class KillResult:
    """One run of a command: killed or finished, and what was found afterwards."""

    command: list[str]
    delay_s: float
    killed: bool
    exit_code: int | None
    inputs_changed: list[str] = field(default_factory=list)
    checked: int = 0
    corrupted: dict[str, str] = field(default_factory=dict)
    leftover_temps: list[str] = field(default_factory=list)
    stale_locks: list[str] = field(default_factory=list)
    rerun_exit_code: int | None = None
    rerun_corrupted: dict[str, str] = field(default_factory=dict)
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return (not self.inputs_changed and not self.corrupted and not self.rerun_corrupted
                and self.rerun_exit_code in (None, 0))


def _fill(cmd: Sequence[str], out: Path) -> list[str]:
    return [str(c).replace("{out}", str(out)) for c in cmd]


def kill_once(
    cmd: Sequence[str],
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    delay_s: float,
    expected_shapes: dict[str, tuple] | None = None,
    rerun: bool = False,
    env: dict | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float = 600,
    rerun_cmd: Callable[[Path], Sequence[str]] | None = None,
) -> KillResult:
    """Start ``cmd`` (``{out}`` in an argument or an input path is replaced by ``out_dir``), SIGKILL its
    process group after ``delay_s`` seconds unless it has finished, then check the inputs
    and everything under ``out_dir``. With ``rerun``, run the command again to completion
    and check its outputs too (recovery from the kill); ``rerun_cmd(out_dir)`` gives the
    command for that (default ``cmd``; e.g. ``train ... --resume`` once a checkpoint exists)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = _fill(cmd, out_dir)
    inputs = _fill(inputs, out_dir)
    before = snapshot(inputs)
    out_res = out_dir.resolve()
    # inputs that live inside the output folder (a run directory read by clean) are
    # compared by hash, not validated as outputs
    ignore = {str(Path(p).resolve().relative_to(out_res)) for p in before if Path(p).resolve().is_relative_to(out_res)}
    env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd,
                            start_new_session=True)
    killed = False
    try:
        proc.wait(timeout=delay_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the command and any workers it started
        killed = True
    _, err = proc.communicate(timeout=timeout)
    after = snapshot(inputs)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    scan = scan_outputs(out_dir, expected_shapes, ignore)
    tail = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
    res = KillResult(list(argv), round(delay_s, 3), killed, proc.returncode, changed, scan["checked"],
                     scan["corrupted"], scan["leftover_temps"], scan["stale_locks"],
                     stderr_tail=tail[-1] if tail else "")
    if rerun:
        again = _fill(rerun_cmd(out_dir), out_dir) if rerun_cmd else argv
        r = subprocess.run(again, capture_output=True, env=env, cwd=cwd, timeout=timeout)
        res.rerun_exit_code = r.returncode
        res.rerun_corrupted = scan_outputs(out_dir, expected_shapes, ignore)["corrupted"]
        if r.returncode:
            lines = [ln for ln in r.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
            res.stderr_tail = "rerun: " + (lines[-1] if lines else "")
        after2 = snapshot(inputs)
        res.inputs_changed = sorted(set(changed) | {k for k in set(before) | set(after2) if before.get(k) != after2.get(k)})
    return res


def time_command(cmd: Sequence[str], out_dir: Path, env: dict | None = None, cwd=None, timeout: float = 600) -> float:
    """Wall seconds of one uninterrupted run (used to spread the kill times); raises
    RuntimeError when the command fails."""
    t0 = time.perf_counter()
    r = subprocess.run(_fill(cmd, out_dir), capture_output=True, env={**os.environ, **(env or {})}, cwd=cwd,
                       timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed: {r.stderr.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - t0


def kill_campaign(
    name: str,
    cmd: Sequence[str],
    inputs: Sequence[str | os.PathLike],
    work_dir: str | os.PathLike,
    n_runs: int,
    seed: int = 0,
    window: tuple[float, float] = (0.0, 1.0),
    duration_s: float | None = None,
    expected_shapes: dict[str, tuple] | None = None,
    prepare: Callable[[Path], None] | None = None,
    rerun_every: int = 0,
    env: dict | None = None,
    min_kills: int = 0,
    rerun_cmd: Callable[[Path], Sequence[str]] | None = None,
) -> dict:
    """``n_runs`` runs of ``cmd``, each killed at a uniform random time in
    ``window`` x the command's uninterrupted duration (measured once when not given);
    with ``min_kills``, further runs until that many were killed before finishing (at most
    3 x ``min_kills`` runs in all).

    Each run gets a fresh ``work_dir/run-<i>`` as ``{out}``; ``prepare(out)`` fills it
    first (e.g. copies a run directory that the command writes into). Every
    ``rerun_every``-th run is re-run to completion after the kill (with ``rerun_cmd``,
    see :func:`kill_once`). Returns counts of
    runs, kills, runs with problems, corrupted files, changed inputs, leftover temps,
    and the per-run records.
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    if duration_s is None:
        ref = work / "reference"
        if prepare:
            prepare(ref)
        duration_s = time_command(cmd, ref, env=env)
    results: list[KillResult] = []
    i = 0
    # n_runs runs; then more (up to 3 x min_kills in all) while fewer than min_kills were
    # killed before finishing
    while i < n_runs or (sum(r.killed for r in results) < min_kills and i < 3 * min_kills):
        out = work / f"run-{i:03d}"
        if prepare:
            prepare(out)
        delay = duration_s * rng.uniform(*window)
        rerun = bool(rerun_every) and i % rerun_every == 0
        results.append(kill_once(cmd, inputs, out, delay, expected_shapes, rerun=rerun, env=env, rerun_cmd=rerun_cmd))
        i += 1
    return summarize(name, results, duration_s)


def summarize(name: str, results: list[KillResult], duration_s: float | None = None) -> dict:
    return {
        "command": name,
        "duration_s": round(duration_s, 2) if duration_s is not None else None,
        "runs": len(results),
        "kills": sum(r.killed for r in results),
        "completed": sum((not r.killed) and r.exit_code == 0 for r in results),
        "failed_without_kill": sum((not r.killed) and r.exit_code != 0 for r in results),
        "files_checked": sum(r.checked for r in results),
        "corrupted_files": sum(len(r.corrupted) + len(r.rerun_corrupted) for r in results),
        "inputs_changed": sum(len(r.inputs_changed) for r in results),
        "leftover_temps": sum(len(r.leftover_temps) for r in results),
        "stale_locks": sum(len(r.stale_locks) for r in results),
        "reruns": sum(r.rerun_exit_code is not None for r in results),
        "reruns_failed": sum(r.rerun_exit_code not in (None, 0) for r in results),
        "problems": [asdict(r) for r in results if not r.ok],
    }
