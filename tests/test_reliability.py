"""Fault injection: bad inputs and faults, one class of failure per section
(docs/reliability.md, "Fault injection"), in the spirit of tests/test_killsafety.py.

Every refused case must give exactly one ``error: ...`` line (no traceback), a non-zero
exit code, unchanged inputs (sha256 of every input file before / after) and no partial
outputs. Classes:

A. outputs onto inputs or run state (symlinks, hard links and ``..`` aliases included);
B. image folders: symlinks leading outside, FIFOs and devices named like images, one
   decoder for training and predict;
C. the system refuses a write: a full disk (a real 64 KiB tmpfs when this process may
   mount one, else a simulated ENOSPC), a file-size limit, a read-only folder (EROFS) and
   permission denied (EACCES), simulated in-process because root ignores permissions;
D. every numeric option at NaN / infinity / out of range / wrong type (CLI and config
   files), devices that do not exist;
E. tampered or damaged run files and models (corrections.csv, decisions.csv,
   labels.npy, classes.json, config.yaml, ONNX metadata);
F. label files that are valid JSON / CSV but wrong (duplicate or empty class names,
   LVIS negatives that overlap positives, absurd sizes), ``find_label_issues`` inputs;
G. ``--help``, every command's ``--help`` and ``info`` without torch; outputs respect
   the umask; a moved run resumes; a dataset without readable images is refused.

The tests are fast: nothing trains except the moved-run test (1 epoch, 8 images of
32 px) and the torch-free checks run in one fresh interpreter.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from labelfix.cli import main
from labelfix.errors import LabelfixError
from labelfix.io import atomic
from labelfix.labels import NEG, POS, UNK
from labelfix.run import CORRECTIONS_COLUMNS
from labelfix.validation import TRAIN_RULES

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "bird"]
N_IMAGES = 8


# ====================================================================== helpers


def invoke(*args, cwd: Path | None = None):
    """Run the CLI in-process (stderr and stdout together in ``.output``)."""
    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_error(res, *fragments: str, code: int | None = None) -> str:
    """Non-zero exit, exactly one non-empty output line ``error: ...`` holding every
    fragment, no traceback. Returns the line."""
    lines = [ln for ln in res.output.splitlines() if ln.strip() and "━" not in ln]   # not progress bars
    assert res.exit_code != 0, res.output
    if code is not None:
        assert res.exit_code == code, (res.exit_code, res.output)
    assert "Traceback" not in res.output, res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), repr(res.exception)
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: "), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def digest(*roots: Path) -> dict[str, str]:
    """sha256 of every regular file under ``roots`` (symlinks followed only when they are
    the root itself; FIFOs and devices skipped)."""
    out = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*"))
        for p in paths:
            if p.is_symlink() or not p.is_file():
                continue
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(folder: Path) -> list[str]:
    """Temporaries left by an atomic writer."""
    return sorted(p.name for p in folder.rglob(".*.tmp"))


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (a FIFO opened for reading blocks forever)."""
    def boom(signum, frame):
        raise AssertionError(f"did not finish within {seconds} s (hung on a FIFO?)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def tiny_onnx(path: Path, k: int = 3, size: int = 8, **meta_overrides) -> Path:
    """A small ONNX model (mean colour -> K logits) with labelfix metadata, built with
    onnx.helper (no torch)."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("W", TensorProto.FLOAT, [3, k], np.linspace(-1, 1, 3 * k).astype(np.float32).tolist())
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", k])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = {"class_names": json.dumps(CLASSES[:k] if k <= 3 else [f"c{i}" for i in range(k)]),
            "img_size": str(size), "mean": "[0.5, 0.5, 0.5]", "std": "[0.5, 0.5, 0.5]", "threshold": "0.5"}
    meta.update(meta_overrides)
    helper.set_model_props(model, {key: v for key, v in meta.items() if v is not None})
    onnx.save(model, str(path))
    return path


def write_images(folder: Path, n: int = N_IMAGES, size: int = 8) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def coco_dict(names: list[str]) -> dict:
    anns = []
    for i in range(len(names)):
        for c in ({i % 3} | ({(i + 1) % 3} if i % 2 else set())):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1})
    return {"images": [{"id": i + 1, "file_name": f, "width": 8, "height": 8} for i, f in enumerate(names)],
            "categories": [{"id": j + 1, "name": c} for j, c in enumerate(CLASSES)],
            "annotations": anns}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """data/ (8 PNG images, labels.json, the same labels as CSV wide and long) and run/ (a
    run directory: label set, stats, corrections.csv, checkpoints, config.yaml), built
    once; tests get a fresh copy (``world``)."""
    root = tmp_path_factory.mktemp("template")
    data = root / "data"
    names = write_images(data)
    coco = coco_dict(names)
    (data / "labels.json").write_text(json.dumps(coco))
    from labelfix.io import read_labels

    ls = read_labels(data / "labels.json")
    lab = np.asarray(ls.labels)
    rows = [["file_name", *CLASSES]] + [[f, *(str(int(v)) for v in lab[i])] for i, f in enumerate(names)]
    (data / "wide.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    run = root / "run"
    ls.save(run)
    atomic.write_npy(run / "split.npy", np.zeros(N_IMAGES, np.int8))
    logits = np.where(lab == POS, 2.0, -2.0).astype(np.float16)
    atomic.write_npy(run / "stats" / "logits.npy", logits)
    recs = []
    for (r, c), action in (((0, 1), "add"), ((0, 0), "remove"), ((3, 2), "add")):
        given = {POS: "1", NEG: "0", UNK: "unknown"}[int(lab[r, c])]
        if (action == "add") == (given == "1"):
            continue
        recs.append({"image_id": int(ls.images.at[r, "image_id"]), "file_name": names[r], "class": CLASSES[c],
                     "category_id": c + 1, "given": given, "suggested": 1 if action == "add" else 0,
                     "action": action, "state": "re-labeled", "score": 0.9 - 0.1 * len(recs), "p_clean": 0.1,
                     "probability": 0.5})
    assert len(recs) >= 2
    pd.DataFrame(recs, columns=CORRECTIONS_COLUMNS).to_csv(run / "corrections.csv", index=False)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.pt").write_bytes(b"not a real checkpoint")
    (run / "config.yaml").write_text("train:\n  epochs: 1\n")
    return root


@pytest.fixture
def world(template, tmp_path) -> dict:
    shutil.copytree(template, tmp_path / "w", symlinks=True)
    w = tmp_path / "w"
    # the run's labels were read from the template's data: point source.json at this copy
    src = json.loads((w / "run" / "source.json").read_text())
    src["path"] = str(w / "data" / "labels.json")
    src["image_root"] = str(w / "data")
    (w / "run" / "source.json").write_text(json.dumps(src))
    return {"root": w, "data": w / "data", "labels": w / "data" / "labels.json", "wide": w / "data" / "wide.csv",
            "run": w / "run", "out": w / "out"}


# ====================================================================== A. outputs onto inputs


def _noise(src, out, *extra):
    return ["noise", src, "--kind", "flip", "--rate", "0.2", "--out", out, *extra]


def _alias_cases():
    """(case id, builder(world) -> argv, fragments of the error line)."""
    def symlink(w, name, target):
        p = w["root"] / name
        p.symlink_to(target)
        return p

    def hardlink(w, name, target):
        p = w["root"] / name
        os.link(target, p)
        return p

    return {
        "noise-out-is-input": (lambda w: _noise(w["labels"], w["labels"]), ["refusing to overwrite the input"]),
        "noise-out-dotdot-alias": (lambda w: _noise(w["labels"], w["data"] / ".." / "data" / "labels.json"),
                                   ["refusing to overwrite the input"]),
        "noise-out-symlink-to-input": (lambda w: _noise(w["labels"], symlink(w, "ln.json", w["labels"])),
                                       ["refusing to overwrite the input"]),
        "noise-out-hardlink-of-input": (lambda w: _noise(w["labels"], hardlink(w, "hl.json", w["labels"])),
                                        ["refusing to overwrite the input"]),
        "noise-changelog-is-input": (
            lambda w: _noise(_long_named(w, "noisy.changes.csv"), w["data"] / "noisy.json", "--format", "csv-wide"),
            ["change log", "refusing to overwrite the input"]),
        "noise-out-inside-run": (lambda w: _noise(w["labels"], w["run"] / "noisy.json"), ["inside the run directory"]),
        "noise-out-run-file": (lambda w: _noise(w["run"], w["run"] / "labels.json"), ["inside the run directory"]),
        "noise-out-symlinked-folder-into-run": (
            lambda w: _noise(w["labels"], symlink(w, "runlink", w["run"]) / "noisy.json"), ["inside the run directory"]),
        "noise-out-wrong-extension": (lambda w: _noise(w["labels"], w["root"] / "noisy.csv"), ["must end in .json"]),
        "coco-out-corrections": (lambda w: ["export", "coco", w["run"], "--out", w["run"] / "corrections.csv"],
                                 ["must end in .json"]),
        "coco-out-corrections-json-name": (
            lambda w: ["export", "coco", w["run"], "--out", symlink(w, "c.json", w["run"] / "corrections.csv")],
            ["inside the run directory", "corrections.csv"]),
        "coco-out-labels": (lambda w: ["export", "coco", w["run"], "--out", w["run"] / "labels.json"],
                            ["inside the run directory"]),
        "coco-out-labels-npy": (lambda w: ["export", "coco", w["run"], "--out", w["run"] / "labels.npy"],
                                ["must end in .json"]),
        "coco-changes-corrections": (
            lambda w: ["export", "coco", w["run"], "--out", w["root"] / "clean.json", "--changes",
                       w["run"] / "corrections.csv"], ["inside the run directory", "corrections.csv"]),
        "coco-changes-decisions": (
            lambda w: ["export", "coco", w["run"], "--out", w["root"] / "clean.json", "--changes",
                       w["run"] / "decisions.csv"], ["inside the run directory", "decisions.csv"]),
        "coco-out-source": (lambda w: ["export", "coco", w["run"], "--out", w["labels"]],
                            ["refusing to overwrite the input"]),
        "coco-out-symlink-to-changes": (
            lambda w: ["export", "coco", w["run"], "--out", symlink(w, "o.json", w["root"] / "log.csv"), "--changes",
                       w["root"] / "log.csv"], ["--out and --changes are the same file"]),
        "coco-out-equals-changes": (
            lambda w: ["export", "coco", w["run"], "--out", w["root"] / "c.json", "--changes", w["root"] / "c.json"],
            ["must end in .csv"]),
        "coco-derived-changelog-is-input": (
            lambda w: ["export", "coco", _run_from_source(w), "--out", w["data"] / "labels2.json"],
            ["--changes", "refusing to overwrite the input"]),
        "onnx-out-checkpoint": (lambda w: ["export", "onnx", w["run"], "--out", w["run"] / "checkpoints" / "best.pt"],
                                ["must end in .onnx"]),
        "onnx-out-checkpoint-onnx-name": (
            lambda w: ["export", "onnx", w["run"], "--out", w["run"] / "checkpoints" / "best.onnx"],
            ["inside the run directory", "checkpoints"]),
        "predict-out-inside-run": (
            lambda w: ["predict", tiny_onnx(w["root"] / "m.onnx"), w["data"], "--out", w["run"] / "p.csv"],
            ["inside the run directory"]),
        "predict-out-exists": (   # a CSV may be a label file (it replaced one before 2026-12-07)
            lambda w: ["predict", tiny_onnx(w["root"] / "m.onnx"), w["data"], "--out", w["wide"]],
            ["already exists", "--overwrite"]),
        "predict-out-is-model": (
            lambda w: ["predict", tiny_onnx(w["root"] / "m.onnx"), w["data"], "--out",
                       symlink(w, "p.csv", w["root"] / "m.onnx")], ["refusing to overwrite the input"]),
        "train-out-holds-data-as-images-csv": (
            lambda w: ["train", _copy(w["wide"], w["root"] / "newrun" / "images.csv"), "--out", w["root"] / "newrun"],
            ["would overwrite this input", "images.csv"]),
        "train-config-in-new-run": (
            lambda w: ["train", w["labels"], "--out", w["root"] / "newrun", "--config",
                       _copy_text("epochs: 1\n", w["root"] / "newrun" / "config.yaml")],
            ["would overwrite this input", "config.yaml"]),
        "train-out-is-data-run": (lambda w: ["train", w["run"], "--out", w["run"]], ["is the input"]),
        "train-out-inside-run": (lambda w: ["train", w["labels"], "--out", w["run"] / "sub"],
                                 ["inside the run directory"]),
        "bench-out-inside-run": (lambda w: ["bench", "--seeds", "1", "--out", w["run"] / "bench"],
                                 ["inside the run directory"]),
    }


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _copy_text(text: str, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(text)
    return dst


def _long_named(w, name: str) -> Path:
    """The wide CSV under a name equal to the change log of ``noisy.json``."""
    return _copy(w["wide"], w["data"] / name)


def _run_from_source(w) -> Path:
    """A run whose source label file is named like the change log of --out labels2.json."""
    src = _copy(w["labels"], w["data"] / "labels2.changes.csv")
    s = json.loads((w["run"] / "source.json").read_text())
    s["path"] = str(src)
    s["format"] = "csv-wide"
    (w["run"] / "source.json").write_text(json.dumps(s))
    return w["run"]


ALIAS_CASES = _alias_cases()


@pytest.mark.parametrize("case", sorted(ALIAS_CASES))
def test_outputs_never_replace_inputs(world, case):
    build, fragments = ALIAS_CASES[case]
    argv = build(world)
    before = digest(world["root"])
    res = invoke(*argv)
    assert_one_error(res, *fragments)
    assert digest(world["root"]) == before, "an input or run file changed"
    assert not world["out"].exists() and not leftovers(world["root"])
    assert not (world["root"] / "clean.json").exists()


def test_derived_output_names_and_success_path(world):
    """The positive control: a fresh --out writes both files (JSON + change log) with
    the umask's permissions, and nothing inside the run."""
    before = digest(world["run"])
    out = world["root"] / "noisy.json"
    res = invoke(*_noise(world["labels"], out))
    assert res.exit_code == 0, res.output
    assert out.exists() and (world["root"] / "noisy.changes.csv").exists()
    assert digest(world["run"]) == before


# ====================================================================== B. image folders


@pytest.fixture
def hostile(world) -> dict:
    """An image folder holding a FIFO, a character device (when mknod works), a symlink
    to a file outside the folder, a symlinked folder leading outside, and a good
    in-folder symlink, each named like an image and listed in the label file."""
    data = world["data"]
    outside = world["root"] / "outside"
    write_images(outside, n=1)
    made = {}
    os.mkfifo(data / "fifo.png")
    made["fifo.png"] = "a FIFO"
    (data / "escape.png").symlink_to(outside / "img0.png")
    made["escape.png"] = "outside the image folder"
    (data / "sub").symlink_to(outside, target_is_directory=True)
    made["sub/img0.png"] = "outside the image folder"
    (data / "good_link.png").symlink_to(data / "img1.png")
    try:
        os.mknod(data / "dev.png", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
        made["dev.png"] = "a device"
    except (PermissionError, OSError):
        pass
    coco = json.loads(world["labels"].read_text())
    for name in [*made, "good_link.png"]:
        i = len(coco["images"]) + 1
        coco["images"].append({"id": i, "file_name": name})
        coco["annotations"].append({"id": 1000 + i, "image_id": i, "category_id": 1})
    world["labels"].write_text(json.dumps(coco))
    return {**world, "bad": made}


def test_info_counts_hostile_files_without_hanging(hostile):
    with deadline(20):
        res = invoke("info", hostile["labels"], "--json", "--verify")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    unreadable = {u.split(": ", 1)[0]: u for u in out["unreadable_files"]}
    assert set(unreadable) == set(hostile["bad"]), out["unreadable_files"]
    for name, why in hostile["bad"].items():
        assert why in unreadable[name]
    assert "good_link.png" not in " ".join(out["unreadable_files"]) and out["missing_files"] == []


@pytest.mark.parametrize("name", ["fifo.png", "escape.png", "sub/img0.png", "dev.png"])
def test_loader_refuses_hostile_file(hostile, name):
    """Training's decoder (and the Dataset) skip them as undecodable: an OSError
    subclass, raised at once (a FIFO must not block)."""
    from labelfix.data.image import DECODE_ERRORS, UnsafeImage, load_rgb

    if name not in hostile["bad"]:
        pytest.skip("mknod is not permitted here")
    with deadline(10), pytest.raises(UnsafeImage) as info:
        load_rgb(hostile["data"] / name, hostile["data"])
    assert isinstance(info.value, DECODE_ERRORS)
    assert load_rgb(hostile["data"] / "good_link.png", hostile["data"]).size == (8, 8)


def test_dataset_skips_hostile_files(hostile):
    from labelfix.data.dataset import PartialLabelDataset
    from labelfix.io import read_labels

    ls = read_labels(hostile["labels"])
    ds = PartialLabelDataset(ls, transform=lambda im: np.asarray(im))
    with deadline(20):
        items = [ds[i] for i in range(len(ds))]
    files = ls.images["file_name"].tolist()
    failed = {files[idx] for img, _, idx in items if img is None}
    assert failed == set(hostile["bad"])


def test_predict_skips_hostile_files(hostile):
    model = tiny_onnx(hostile["root"] / "m.onnx")
    out = hostile["root"] / "p.csv"
    with deadline(30):
        res = invoke("predict", model, hostile["data"], "--out", out)
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert not any(n in f for f in df["file"] for n in ("fifo", "escape", "dev.png", "sub/"))
    assert any(f.endswith("good_link.png") for f in df["file"])
    assert "skipped" in res.output
    res = invoke("predict", model, hostile["data"] / "fifo.png")
    assert_one_error(res, "fifo.png", "not a regular file")


def test_predict_names_a_broken_link_given_by_name(world, tmp_path):
    """An image given by name that is a symbolic link loop, or a link to a missing file:
    one line saying which (both were "no such file or directory", while a folder walk
    named the loop)."""
    model = tiny_onnx(tmp_path / "m.onnx")
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "deleted.png")
    assert_one_error(invoke("predict", model, tmp_path / "a.png"), "a.png", "a symbolic link loop", code=2)
    assert_one_error(invoke("predict", model, tmp_path / "gone.png"), "gone.png",
                     f"a symbolic link to {tmp_path / 'deleted.png'}, which does not exist", code=2)
    (tmp_path / "chain.png").symlink_to(tmp_path / "gone.png")   # the end of the chain is named
    assert_one_error(invoke("predict", model, tmp_path / "chain.png"), "chain.png",
                     f"a symbolic link to {tmp_path / 'deleted.png'}, which does not exist", code=2)


def _decode_both(path: Path):
    from labelfix.data.image import load_rgb
    from labelfix.export.predict import load_image

    return np.asarray(load_rgb(path)), np.asarray(load_image(path))


@pytest.mark.parametrize("kind", ["rgba", "la", "palette-transparency", "palette-rgba", "rgb-trns", "gray16", "cmyk"])
def test_one_decoder_for_training_and_predict(tmp_path, kind):
    """The model sees the same pixels in predict as in training; transparent pixels are
    composited onto black in both."""
    p = tmp_path / f"{kind}.png"
    if kind == "rgba":
        Image.new("RGBA", (4, 4), (200, 100, 50, 0)).save(p)
    elif kind == "la":
        Image.new("LA", (4, 4), (180, 0)).save(p)
    elif kind == "palette-transparency":
        im = Image.new("P", (4, 4), 1)
        im.putpalette([0, 0, 0, 250, 10, 10] + [0, 0, 0] * 254)
        im.save(p, transparency=1)
    elif kind == "palette-rgba":
        im = Image.new("RGBA", (4, 4), (10, 200, 10, 0)).quantize(colors=2)
        im.save(p)
    elif kind == "rgb-trns":
        Image.new("RGB", (4, 4), (5, 6, 7)).save(p, transparency=(5, 6, 7))
    elif kind == "gray16":
        Image.fromarray(np.array([[0, 257, 25607, 65535]] * 4, dtype=np.uint16)).save(p)
    else:
        p = tmp_path / "cmyk.jpg"
        Image.new("CMYK", (4, 4), (0, 255, 0, 0)).save(p)
    train, serve = _decode_both(p)
    np.testing.assert_array_equal(train, serve)
    if kind in ("rgba", "la", "palette-transparency", "rgb-trns"):
        assert train.max() == 0, "a fully transparent pixel is composited onto black"


# ====================================================================== C. the system refuses a write

WRITERS = {
    "train": lambda w: ["train", w["labels"], "--out", w["out"] / "run", "--backbone", "test_resnet", "--img-size",
                        "32", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-progress", "--mix", "none"],
    "export-onnx": lambda w: ["export", "onnx", _real_checkpoint_run(w), "--out", w["out"] / "m.onnx"],
    "noise": lambda w: _noise(w["labels"], w["out"] / "noisy.json"),
    "export-coco": lambda w: ["export", "coco", w["run"], "--out", w["out"] / "clean.json", "--from", "csv",
                              "--decisions", "all"],
    "predict": lambda w: ["predict", tiny_onnx(w["root"] / "m.onnx"), w["data"], "--out", w["out"] / "p.csv"],
    "clean": lambda w: ["clean", w["run"], "--no-report", "--neighbours", "0"],
}


def _fail(err: int):
    def raiser(*args, **kwargs):
        raise OSError(err, os.strerror(err))
    return raiser


#: the slow writers (a model is built / exported) meet two of the four errors
WRITE_CASES = [(c, e) for c in sorted(WRITERS) for e in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT)
               if c not in ("train", "export-onnx") or e in (errno.ENOSPC, errno.EROFS)]


def _real_checkpoint_run(w) -> Path:
    """The world's run with a real (tiny) checkpoint, for export onnx."""
    import torch

    from labelfix.models import create_model, model_config

    torch.manual_seed(0)
    model = create_model("test_resnet", "linear", num_classes=len(CLASSES), img_size=32).eval()
    torch.save({"model": model.state_dict(), "ema": None, "optimizer": {}, "scheduler": {}, "epoch": 1,
                "global_step": 1, "rng": {}, "sampler": {}, "model_config": model_config(model),
                "classes": CLASSES, "run_fingerprint": "f"}, w["run"] / "checkpoints" / "best.pt")
    return w["run"]


@pytest.mark.parametrize("command,err", WRITE_CASES, ids=[f"{c}-{errno.errorcode[e]}" for c, e in WRITE_CASES])
def test_write_failure_is_one_line(world, monkeypatch, command, err):
    """Every writing command meets a refused write (on the file's creation for EROFS /
    EACCES, on its flush for ENOSPC / EDQUOT): one line naming the output and what to do,
    exit code 1, no partial output set, no temporaries, inputs unchanged."""
    argv = WRITERS[command](world)
    world["out"].mkdir()
    before = digest(world["data"], world["labels"])
    run_before = digest(world["run"])
    if err in (errno.EROFS, errno.EACCES):
        monkeypatch.setattr(atomic.tempfile, "mkstemp", _fail(err))
    else:
        monkeypatch.setattr(atomic.os, "fsync", _fail(err))
    res = invoke(*argv)
    monkeypatch.undo()
    line = assert_one_error(res, os.strerror(err), code=1)
    assert "(" in line  # what to do
    assert digest(world["data"], world["labels"]) == before
    assert digest(world["run"]) == run_before
    assert [p for p in world["out"].rglob("*") if not p.is_dir()] == [], "a partial output set was left"
    assert not leftovers(world["root"]) and not (world["run"] / ".labelfix.lock").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB tmpfs (root only); skipped where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()[:80]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_full_disk(world, small_disk):
    """noise onto a 64 KiB file system, with the disk nearly full: ENOSPC from the kernel,
    one line, no output and no temporary left on the small disk."""
    coco = json.loads(world["labels"].read_text())
    coco["info"] = {"padding": "x" * 40_000}      # the output needs > 40 KB
    world["labels"].write_text(json.dumps(coco))
    (small_disk / "ballast").write_bytes(b"\0" * 30_000)
    res = invoke(*_noise(world["labels"], small_disk / "noisy.json"))
    assert_one_error(res, "noisy", os.strerror(errno.ENOSPC), code=1)
    assert sorted(p.name for p in small_disk.iterdir()) == ["ballast"]


def test_file_size_limit_subprocess(world):
    """A real kernel error in a fresh process: RLIMIT_FSIZE makes the write fail with
    EFBIG (SIGXFSZ ignored); the command prints one line and leaves nothing."""
    out = world["out"] / "noisy.json"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600)); "
            "from labelfix.cli import main; main(sys.argv[1:], prog_name='labelfix')")
    argv = [sys.executable, "-c", code, *map(str, _noise(world["labels"], out))]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "too large" in lines[0], lines
    assert not world["out"].exists() or list(world["out"].iterdir()) == []


def test_output_set_is_all_or_nothing(tmp_path, monkeypatch):
    """The second of two files fails: the first keeps its old content."""
    a, b = tmp_path / "a.json", tmp_path / "b.csv"
    atomic.write_json(a, {"old": True})
    with pytest.raises(OSError):
        with atomic.output_set():
            atomic.write_json(a, {"new": True})
            monkeypatch.setattr(atomic.os, "fsync", _fail(errno.ENOSPC))
            atomic.write_text(b, "x")
    monkeypatch.undo()
    assert json.loads(a.read_text()) == {"old": True} and not b.exists() and not leftovers(tmp_path)


def test_output_set_reads_back_and_removes_with_the_set(tmp_path):
    """Inside a set a writer reads its newest content through ``staged``, a second write
    of a file replaces the first, and ``remove`` waits for the set: a failed set keeps
    the removed file and the old content, a written one applies both."""
    a, gone = tmp_path / "a.json", tmp_path / "gone.npy"
    for fail in (True, False):
        atomic.write_json(a, {"v": 0})
        atomic.write_npy(gone, np.zeros(2))
        with contextlib.suppress(RuntimeError):
            with atomic.output_set():
                atomic.write_json(a, {"v": 1})
                atomic.write_json(a, {"v": 2})
                assert json.loads(atomic.staged(a).read_text()) == {"v": 2} and atomic.staged(a) != a
                assert json.loads(a.read_text()) == {"v": 0}
                atomic.remove(gone)
                assert gone.exists() and atomic.staged(tmp_path / "other") == tmp_path / "other"
                if fail:
                    raise RuntimeError("the block fails")
        assert json.loads(a.read_text()) == {"v": 0 if fail else 2}
        assert gone.exists() == fail and not leftovers(tmp_path)


def test_output_set_nested_and_spellings(tmp_path, monkeypatch):
    """A set opened inside another joins it (nothing is written before the outer set
    ends, and its failure discards the inner set's files too); one file spelled two ways
    is one file; reading a file the set removes is FileNotFoundError."""
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    atomic.write_json(a, {"v": 0})
    with pytest.raises(RuntimeError):
        with atomic.output_set():
            with atomic.output_set():
                atomic.write_json(b, {"v": 1})
            assert not b.exists() and json.loads(atomic.staged(b).read_text()) == {"v": 1}
            raise RuntimeError("the outer block fails")
    assert not b.exists() and not leftovers(tmp_path)
    with atomic.output_set():
        atomic.remove(a)
        with pytest.raises(FileNotFoundError):
            atomic.staged("./a.json")
        with atomic.output_set():
            atomic.write_json("./a.json", {"v": 2})   # after the outer set's removal: written, not removed
        assert json.loads(atomic.staged(a).read_text()) == {"v": 2}
    assert json.loads(a.read_text()) == {"v": 2} and not leftovers(tmp_path)


def test_failed_clean_keeps_the_previous_clean(world, monkeypatch):
    """A clean that fails at its last write (the report) leaves every output of the
    previous clean as it was: cells/, corrections.csv, clean.json and report/ belong to
    one set (before, the new cells stood beside the old suggestions); a clean without
    neighbour evidence leaves none of an earlier one's beside its own."""
    run = world["run"]
    (run / "cells").mkdir()
    for stale in ("neighbours.npy", "duplicates.csv"):   # of an earlier clean with neighbour evidence
        (run / "cells" / stale).write_text("stale")
    assert invoke("clean", run, "--neighbours", "0").exit_code == 0
    assert not (run / "cells" / "neighbours.npy").exists() and not (run / "cells" / "duplicates.csv").exists()
    before = digest(run)
    assert any("/cells/score.npy" in k for k in before) and any("/report/" in k for k in before)
    monkeypatch.setattr(atomic, "write_text", _fail(errno.ENOSPC))   # index.html, the report's last file
    res = invoke("clean", run, "--neighbours", "0", "--score", "gmm", "--max-suggestions", "1")
    monkeypatch.undo()
    assert_one_error(res, os.strerror(errno.ENOSPC), code=1)
    assert digest(run) == before and not leftovers(run)
    # the failed clean would have changed them: the same options without the failure do
    assert invoke("clean", run, "--neighbours", "0", "--score", "gmm", "--max-suggestions", "1").exit_code == 0
    after = digest(run)
    assert after[str(run / "cells" / "score.npy")] != before[str(run / "cells" / "score.npy")]
    assert after[str(run / "cells" / "clean.json")] != before[str(run / "cells" / "clean.json")]


# ====================================================================== D. numeric options


def _bad_values(rule) -> list[str]:
    vals = ["nan", "inf"]
    if rule.integer:
        vals = ["nan", "1.5"]
    if rule.low is not None:
        vals.append(f"{rule.low:g}" if rule.low_open else f"{rule.low - 1:g}")
    if rule.high is not None:
        vals.append(f"{rule.high:g}" if rule.high_open else f"{rule.high + 1:g}")
    vals.append("abc")
    return sorted(set(vals))


TRAIN_CASES = [(name, v) for name, rule in sorted(TRAIN_RULES.items()) for v in _bad_values(rule)]


@pytest.fixture(scope="module")
def train_data(template) -> Path:
    return template / "data" / "labels.json"


@pytest.mark.parametrize("name,value", TRAIN_CASES, ids=[f"{n}={v}" for n, v in TRAIN_CASES])
def test_train_numeric_options(train_data, tmp_path, name, value):
    flag = "--" + name.replace("_", "-")
    before = digest(train_data.parent)
    res = invoke("train", train_data, "--out", tmp_path / "run", flag, value)
    assert_one_error(res, flag, code=2)
    assert not (tmp_path / "run").exists()
    assert digest(train_data.parent) == before


CONFIG_CASES = {
    "img_size-bool": ("img_size: true\n", "img_size"),
    "epochs-string": ("epochs: '3'\n", "epochs"),
    "epochs-float": ("epochs: 2.5\n", "epochs"),
    "lr-string": ("lr: fast\n", "lr"),
    "lr-nan": ("lr: .nan\n", "lr"),
    "weight_decay-negative": ("weight_decay: -1\n", "weight_decay"),
    "ema_decay-2": ("ema_decay: 2\n", "ema_decay"),
    "clip_grad-negative": ("clip_grad: -1\n", "clip_grad"),
    "batch_size-1": ("batch_size: 1\n", "BatchNorm"),
    "pretrained-string": ("pretrained: 'yes'\n", "pretrained"),
    "backbone-number": ("backbone: 5\n", "backbone"),
    "loss_kwargs-list": ("loss_kwargs: [1, 2]\n", "loss_kwargs"),
    "workers-negative": ("workers: -2\n", "workers"),
    "not-a-mapping": ("- 1\n- 2\n", "expected a mapping"),
    "key-twice": ("epochs: 1\nepochs: 2\n", "line 2: key 'epochs' appears twice"),   # the last one won
    "dash-and-underscore": ("batch-size: 4\nbatch_size: 8\n", "--batch-size is given twice"),
    "not-utf8": ("# r\udce9glages\nepochs: 1\n", "not UTF-8 text"),
    "img_size-huge": ("img_size: 5000\n", "img_size"),
    "backbone-unknown": ("backbone: nosuch\n", "backbone 'nosuch': unknown timm model"),   # named no file
    "train-not-a-section": ("train: 5\n", "train: expected a run's train: section"),   # "unknown option train"
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_file_types(train_data, tmp_path, case):
    text, fragment = CONFIG_CASES[case]
    conf = tmp_path / "opts.yaml"
    conf.write_bytes(text.encode("utf-8", "surrogateescape"))   # \udce9: a Latin-1 byte
    res = invoke("train", train_data, "--out", tmp_path / "run", "--config", conf)
    assert_one_error(res, fragment, str(conf), code=2)
    assert not (tmp_path / "run").exists()


def test_train_config_python_api_refuses_nan(tmp_path):
    from labelfix.train.config import TrainConfig

    for kw, fragment in (({"lr": float("nan")}, "--lr"), ({"clip_grad": -1.0}, "--clip-grad"),
                         ({"img_size": True}, "--img-size"), ({"momentum": 1.0}, "--momentum")):
        with pytest.raises(LabelfixError, match=fragment):
            TrainConfig(data="x.json", out=str(tmp_path / "r"), **kw).validate()


OTHER_OPTION_CASES = {
    "clean-threshold-nan": (lambda w: ["clean", w["run"], "--clean-threshold", "nan"], "--clean-threshold"),
    "clean-relabel-nan": (lambda w: ["clean", w["run"], "--relabel-threshold", "nan"], "--relabel-threshold"),
    "clean-relabel-low": (lambda w: ["clean", w["run"], "--relabel-threshold", "0.2"], "--relabel-threshold"),
    "clean-neighbours-negative": (lambda w: ["clean", w["run"], "--neighbours", "-1"], "--neighbours"),
    "clean-max-suggestions-negative": (lambda w: ["clean", w["run"], "--max-suggestions", "-3"],
                                       "--max-suggestions"),
    "noise-rate-nan": (lambda w: ["noise", w["labels"], "--kind", "flip", "--rate", "nan", "--out",
                                  w["root"] / "n.json"], "--rate"),
    "noise-rate-2": (lambda w: ["noise", w["labels"], "--kind", "flip", "--rate", "2", "--out", w["root"] / "n.json"],
                     "--rate"),
    "noise-seed-string": (lambda w: _noise(w["labels"], w["root"] / "n.json", "--seed", "x"), "--seed"),
    "noise-seed-negative": (lambda w: _noise(w["labels"], w["root"] / "n.json", "--seed", "-1"), "--seed"),
    "noise-seed-beyond-int64": (lambda w: _noise(w["labels"], w["root"] / "n.json", "--seed", str(2**64)),
                                "--seed"),   # train's range: [0, 2**63)
    "demo-seed-negative": (lambda w: ["demo", "--out", w["root"] / "demo", "--seed", "-1", "--no-fiftyone"], "--seed"),
    "clean-classes-no-name": (lambda w: ["clean", w["run"], "--classes", " , "], "--classes ' , ': no class name"),
    "predict-threshold-nan": (lambda w: ["predict", tiny_onnx(w["root"] / "m.onnx"), w["data"], "--threshold", "nan"],
                              "--threshold"),
    "predict-batch-size-0": (lambda w: ["predict", tiny_onnx(w["root"] / "m.onnx"), w["data"], "--batch-size", "0"],
                             "--batch-size"),
    "onnx-threshold-nan": (lambda w: ["export", "onnx", w["run"], "--out", w["root"] / "m.onnx", "--threshold", "nan"],
                           "--threshold"),
    "onnx-threshold-1": (lambda w: ["export", "onnx", w["run"], "--out", w["root"] / "m.onnx", "--threshold", "1"],
                         "--threshold"),
    "onnx-img-size-0": (lambda w: ["export", "onnx", w["run"], "--out", w["root"] / "m.onnx", "--img-size", "0"],
                        "--img-size"),
    "onnx-img-size-huge": (lambda w: ["export", "onnx", w["run"], "--out", w["root"] / "m.onnx", "--img-size",
                                      "4000000"], "--img-size"),   # a numpy MemoryError traceback before
    "onnx-opset-17": (lambda w: ["export", "onnx", w["run"], "--out", w["root"] / "m.onnx", "--opset", "17"],
                      "--opset"),
    "onnx-opset-99": (lambda w: ["export", "onnx", w["run"], "--out", w["root"] / "m.onnx", "--opset", "99"],
                      "--opset: 99"),
    "coco-min-score-5": (lambda w: ["export", "coco", w["run"], "--out", w["root"] / "c.json", "--decisions",
                                    "min-score", "--min-score", "5"], "--min-score"),   # scores lie in [0, 1]
    "coco-min-score-nan": (lambda w: ["export", "coco", w["run"], "--out", w["root"] / "c.json", "--decisions",
                                      "min-score", "--min-score", "nan"], "--min-score"),
    "demo-rate-nan": (lambda w: ["demo", "--out", w["root"] / "demo", "--rate", "nan", "--no-review"], "--rate"),
    "bench-seeds-0": (lambda w: ["bench", "--seeds", "0", "--out", w["root"] / "b"], "--seeds"),
    # train: refused when the data and options are read; the --out folder it made is removed again
    "train-val-split-rounds-to-none": (lambda w: _train(w, "--val-split", "0.01"),
                                       "--val-split (val_split) 0.01: 8 images x 0.01 rounds to no validation image"),
    "train-loss-kwargs-not-a-number": (lambda w: _train(w, "--loss", "asl", "--loss-kwargs", "{gamma_neg: abc}"),
                                       "loss 'asl': gamma_neg: 'abc' is not a number"),
    "train-loss-kwargs-kappa-string": (lambda w: _train(w, "--loss", "epr", "--loss-kwargs", "{kappa: abc}"),
                                       "loss epr: kappa='abc': expected a finite number"),
    "train-loss-kwargs-of-no-options": (lambda w: _train(w, "--loss", "bce", "--loss-kwargs", "{args: 1}"),
                                        "args: not an option of this loss (options: none)"),
    "train-loss-kwargs-of-auto": (lambda w: _train(w, "--loss-kwargs", "{gamma_neg: 2}"),
                                  "--loss-kwargs: options of which loss? --loss auto picks it from the labels"),
    "train-all-unknown": (lambda w: ["train", _all_unknown(w)] + _train(w)[2:], "no known label in the training images"),
}


def _all_unknown(w) -> Path:
    """A wide CSV of the world's images with every cell empty (unknown)."""
    rows = (w["wide"]).read_text().splitlines()
    path = w["root"] / "unknown.csv"
    path.write_text("\n".join([rows[0]] + [r.split(",")[0] + "," * (r.count(",")) for r in rows[1:]]) + "\n")
    return path


@pytest.mark.parametrize("case", sorted(OTHER_OPTION_CASES))
def test_other_numeric_options(world, case):
    build, flag = OTHER_OPTION_CASES[case]
    argv = build(world)
    before = digest(world["root"])
    res = invoke(*argv)
    assert_one_error(res, flag, code=2)
    assert not (world["root"] / "newrun").exists()   # train removes the --out folder it made
    after = {k: v for k, v in digest(world["root"]).items() if not k.endswith("m.onnx")}
    assert after == {k: v for k, v in before.items() if not k.endswith("m.onnx")}


def _train(w, *extra):
    return ["train", w["labels"], "--out", w["root"] / "newrun", "--backbone", "test_resnet", "--img-size", "32",
            "--epochs", "1", "--workers", "0", "--no-progress", *extra]


#: an option that would have no effect in this combination is refused, never ignored
UNUSED_OPTION_CASES = {
    "train-momentum-adamw": (lambda w: _train(w, "--momentum", "0.5"), "--momentum: has no effect without --optimizer sgd"),
    "train-ema-decay-no-ema": (lambda w: _train(w, "--ema-decay", "0.9"), "--ema-decay: has no effect without --ema"),
    "train-min-lr-constant": (lambda w: _train(w, "--schedule", "constant", "--min-lr-ratio", "0.5"), "--min-lr-ratio"),
    "train-warmup-ratio-no-warmup": (lambda w: _train(w, "--warmup-epochs", "0", "--warmup-lr-ratio", "0.5"),
                                     "--warmup-lr-ratio"),
    "train-class-groups-no-val": (lambda w: _train(w, "--class-groups", "tertile"),
                                  "--class-groups: cuts the validation mAP"),
    "train-curriculum-after-training": (lambda w: _train(w, "--mix", "logicmix", "--curriculum-start", "1"),
                                        "--curriculum-start: 1: pseudo-labels made at the end of epoch E"),
    "train-balancemix-an": (lambda w: _train(w, "--mix", "balancemix", "--loss", "an"), "exactly like --loss bce"),
    "train-mix-option-mix-auto": (lambda w: _train(w, "--mix-prob", "0.3"), "--mix-prob: options of which method"),
    "train-balancemix-warmup-beyond-epochs": (lambda w: _train(w, "--mix", "balancemix", "--balancemix-warmup", "2"),
                                              "--balancemix-warmup: 2: label management starts after the warm-up"),
    "train-fold-workers-no-folds": (lambda w: _train(w, "--fold-workers", "2"), "--fold-workers: trains cross-fitting"),
    "train-no-dynamics-no-folds": (lambda w: _train(w, "--no-dynamics"), "--no-dynamics: only cross-fitting's fold"),
    "train-refit-loss-no-folds": (lambda w: _train(w, "--refit-loss", "role"),
                                  "--refit-loss: trains cross-fitting's rounds 2 and later"),
    "train-icmixup-single-weight": (lambda w: _train(w, "--mix", "icmixup", "--icm-mode", "single", "--icm-weight", "2"),
                                    "--icm-mode single: the paper's loss needs single-label data"),
    "train-balancemix-warmup-0": (lambda w: _train(w, "--mix", "balancemix", "--balancemix-warmup", "0"),
                                  "--balancemix-warmup: 0 must be >= 1"),
    "train-an-fully-known": (lambda w: _train(w, "--loss", "an"),
                             "--loss an: only changes how unknown cells train, and the training labels have none"),
    "train-epr-kappa-0": (lambda w: _train(w, "--loss", "epr", "--loss-kwargs", "{kappa: 0}"),
                          "kappa=0.0: expected a finite value > 0"),
    "clean-sp-removals-multilabel": (lambda w: ["clean", w["run"], "--single-positive-removals"],
                                     "labels are not single-positive (positive-only"),
    "review-port-no-launch": (lambda w: ["review", w["run"], "--port", "6000"], "--port: only used with --launch"),
    "export-coco-name-csv": (lambda w: ["export", "coco", w["run"], "--out", w["root"] / "c.json", "--from", "csv",
                                        "--name", "x"], "--name names the review dataset"),
    "demo-sp-rate": (lambda w: ["demo", "--out", w["root"] / "demo", "--noise", "single-positive", "--rate", "0.2"],
                     "--rate: single-positive noise"),
    "demo-later-epochs-one-round": (lambda w: ["demo", "--out", w["root"] / "demo", "--rounds", "1", "--later-epochs",
                                               "3"], "--later-epochs: one review round trains --epochs only"),
    "info-ignore-column-coco": (lambda w: ["info", w["labels"], "--ignore-column", "x"],
                                "--ignore-column applies to CSV files only (format is coco)"),
    "info-file-column-coco": (lambda w: ["info", w["labels"], "--file-column", "x"],
                              "--file-column applies to CSV files only (format is coco)"),
    "info-verify-no-files": (lambda w: ["info", w["labels"], "--verify", "--no-files"], "choose one"),
    # noise wrote a dataset whose every image was missing
    "noise-images-not-there": (lambda w: ["noise", w["labels"], "--images", w["root"] / "nowhere", "--kind", "flip",
                                          "--rate", "0.2", "--out", w["root"] / "n.json"],
                               "'--images': Directory"),
    # a folder that exists but holds none of the images was recorded as the image folder
    "noise-images-wrong-folder": (lambda w: ["noise", w["labels"], "--images", w["root"], "--kind", "flip", "--rate",
                                             "0.2", "--out", w["root"] / "n.json"],
                                  "image files of the labels is there (first: img0.png); give the folder"),
    "info-images-no-files": (lambda w: ["info", w["labels"], "--images", w["root"], "--no-files"],
                             "--images says where the image files are"),
    "bench-test-without-data": (lambda w: ["bench", "--test", w["labels"], "--out", w["root"] / "b"],
                                "--test: the demo dataset brings its own test split"),
    "bench-sp-methods-without-sp": (lambda w: ["bench", "--noise", "flip:0.2", "--single-positive-methods", "role",
                                               "--out", w["root"] / "b"], "--single-positive-methods: only used"),
}


@pytest.mark.parametrize("case", sorted(UNUSED_OPTION_CASES))
def test_unused_options_are_refused(world, case):
    build, fragment = UNUSED_OPTION_CASES[case]
    before = digest(world["root"])
    res = invoke(*build(world))
    assert_one_error(res, fragment, code=2)
    assert digest(world["root"]) == before   # nothing written, nothing changed


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.parametrize("command", ["clean", "train", "api"])
def test_device_without_gpu(world, command):
    if _has_cuda():
        pytest.skip("this machine has CUDA")
    if command == "api":
        from labelfix.cleaning.api import find_label_issues

        with pytest.raises(LabelfixError, match="CUDA is not available"):
            find_label_issues(np.zeros((4, 2), np.int8), np.full((4, 2), 0.5), device="cuda")
        return
    argv = (["clean", world["run"], "--device", "cuda"] if command == "clean"
            else ["train", world["labels"], "--out", world["root"] / "r", "--device", "cuda"])
    assert_one_error(invoke(*argv), "CUDA is not available", code=2)
    assert not (world["run"] / "cells").exists()


# ====================================================================== E. tampered run files


def _edit_corrections(fn):
    def apply(w):
        p = w["run"] / "corrections.csv"
        frame = pd.read_csv(p, dtype=str, keep_default_na=False)
        fn(frame)
        frame.to_csv(p, index=False)
    return apply


def _edit_source(w, section: str, i: int, key: str, value):
    """Edit the run's source COCO after training (export coco writes the decisions onto it)."""
    data = json.loads(w["labels"].read_text())
    data[section][i][key] = value
    w["labels"].write_text(json.dumps(data))


def _annotate_source(w):
    """A positive added to the source COCO by hand after training (the first image and
    category it does not annotate)."""
    data = json.loads(w["labels"].read_text())
    have = {(a["image_id"], a["category_id"]) for a in data["annotations"]}
    image, cat = next((im["id"], c["id"]) for im in data["images"] for c in data["categories"]
                      if (im["id"], c["id"]) not in have)
    data["annotations"].append({"id": 10_000, "image_id": image, "category_id": cat, "area": 0.0, "iscrowd": 0})
    w["labels"].write_text(json.dumps(data))


def _write(rel: str, data: bytes):
    def apply(w):
        (w["run"] / rel).write_bytes(data)
    return apply


TAMPER_CASES = {
    "corrections-suggested-2": (_edit_corrections(lambda f: f.loc.__setitem__((0, "suggested"), "2")),
                                ["corrections.csv: row 2", "suggested"]),
    "corrections-unknown-class": (_edit_corrections(lambda f: f.loc.__setitem__((1, "class"), "unicorn")),
                                  ["corrections.csv: row 3", "unicorn"]),
    "corrections-category-contradicts-class": (
        _edit_corrections(lambda f: f.loc.__setitem__((0, "category_id"), "3" if f.loc[0, "class"] != "bird" else "1")),
        ["corrections.csv: row 2", "does not match class"]),
    "corrections-given-maybe": (_edit_corrections(lambda f: f.loc.__setitem__((0, "given"), "maybe")),
                                ["row 2", "given"]),
    "corrections-given-contradicts-run": (
        _edit_corrections(lambda f: f.loc.__setitem__((0, "given"), {"1": "0", "0": "1", "unknown": "1"}[f.loc[0, "given"]])),
        ["row 2", "does not match the run's label"]),
    "corrections-unknown-image": (_edit_corrections(lambda f: f.loc.__setitem__((0, "image_id"), "999")),
                                  ["row 2", "image_id 999"]),
    "corrections-image-id-text": (_edit_corrections(lambda f: f.loc.__setitem__((0, "image_id"), "one")),
                                  ["row 2", "not an integer"]),
    "corrections-action-flip": (_edit_corrections(lambda f: f.loc.__setitem__((0, "action"), "flip")),
                                ["row 2", "action"]),
    "corrections-suggested-contradicts-action": (
        _edit_corrections(lambda f: f.loc.__setitem__((0, "action"), "add" if f.loc[0, "action"] == "remove" else "remove")),
        ["row 2"]),
    "corrections-score-text": (_edit_corrections(lambda f: f.loc.__setitem__((0, "score"), "high")),
                               ["row 2", "score"]),
    "corrections-duplicate-row": (_edit_corrections(lambda f: f.loc.__setitem__(len(f), f.loc[0].tolist())),
                                  ["a second row"]),
    "corrections-missing-column": (_edit_corrections(lambda f: f.pop("category_id")),
                                   ["missing column", "category_id"]),
    "corrections-file-name-mismatch": (_edit_corrections(lambda f: f.loc.__setitem__((0, "file_name"), "zzz.png")),
                                       ["row 2", "file_name"]),
    "corrections-empty": (_write("corrections.csv", b""), ["corrections.csv", "empty file"]),
    "corrections-not-utf8": (_write("corrections.csv", b"image_id,class\n1,\xff\xfe\n"), ["corrections.csv",
                                                                                            "not UTF-8"]),
    "corrections-semicolon-separated": (   # a spreadsheet in a ';' locale (clean dropped its decisions before)
        lambda w: pd.read_csv(w["run"] / "corrections.csv").assign(accept="yes").to_csv(
            w["run"] / "corrections.csv", index=False, sep=";"), ["missing column", "separated by ';'"]),
    "corrections-accept-capitalised": (   # read as no decision (an export with 0 changes) before
        _edit_corrections(lambda f: f.__setitem__("Accept", "yes")), ["column 'Accept'", "must be named 'accept'"]),
    "labels-npy-empty": (_write("labels.npy", b""), ["labels.npy: unreadable array: the file is empty"]),
    "source-category-renamed": (lambda w: _edit_source(w, "categories", 0, "name", "dog"),
                                ["labels.json: category 1 is named 'dog', the run's class 'cat'"]),
    "source-file-renamed": (lambda w: _edit_source(w, "images", 0, "file_name", "other.png"),
                            ["labels.json: image", "'other.png'", "changed after training"]),
    # the export dropped the annotation without a word (the run's label is negative, no decision)
    "source-annotation-added": (_annotate_source, ["labels.json: 1 label(s) changed after training",
                                                   "positive in the file, negative in the run's labels"]),
    "labels-npy-wrong-shape": (lambda w: np.save(w["run"] / "labels.npy", np.zeros((3, 2), np.int8)),
                               ["labels.npy", "shape (3, 2)"]),
    "labels-npy-wrong-dtype": (lambda w: np.save(w["run"] / "labels.npy", np.zeros((N_IMAGES, 3), np.float64)),
                               ["labels.npy", "dtype float64"]),
    "labels-npy-garbage": (_write("labels.npy", b"\x93NUMPY garbage"), ["labels.npy: unreadable array"]),
    "verified-npy-garbage": (_write("verified.npy", b"\x93NUMPY garbage"), ["verified.npy: unreadable array"]),
    "labels-npy-value-5": (lambda w: np.save(w["run"] / "labels.npy", np.full((N_IMAGES, 3), 5, np.int8)),
                           ["labels.npy: row 0, column 0", "value 5"]),
    "classes-json-duplicate-name": (
        _write("classes.json", json.dumps([{"name": "cat", "category_id": 1}, {"name": "cat", "category_id": 2},
                                           {"name": "bird", "category_id": 3}]).encode()),
        ["classes.json", "duplicate class name 'cat'"]),
    "classes-json-empty-name": (
        _write("classes.json", json.dumps([{"name": "cat", "category_id": 1}, {"name": " ", "category_id": 2},
                                           {"name": "bird", "category_id": 3}]).encode()),
        ["classes.json", "non-empty"]),
    "classes-json-not-a-list": (_write("classes.json", b"7"), ["classes.json: corrupt run directory file"]),
    "images-csv-text-id": (lambda w: (w["run"] / "images.csv").write_text(
        (w["run"] / "images.csv").read_text().replace("\n1,", "\nx1,", 1)), ["images.csv", "image_id"]),
}


@pytest.mark.parametrize("case", sorted(TAMPER_CASES))
def test_tampered_run_files(world, case):
    tamper, fragments = TAMPER_CASES[case]
    tamper(world)
    before = digest(world["root"])
    out = world["root"] / "clean.json"
    res = invoke("export", "coco", world["run"], "--out", out, "--from", "csv", "--decisions", "all")
    assert_one_error(res, *fragments, code=2)
    assert not out.exists() and digest(world["root"]) == before


def _embedding(w, arr, record: bytes = b'{"rows_done": 8, "complete": true, "meta": {}}'):
    """A finished final-model embedding in the run (what clean's neighbour evidence reads)."""
    np.save(w["run"] / "stats" / "embeddings.npy", arr)
    (w["run"] / "stats" / "embeddings.json").write_bytes(record)


def _truncated_split(w):
    p = w["run"] / "split.npy"
    p.write_bytes(p.read_bytes()[:130])


#: damaged statistics of a run: ``labelfix clean`` names the file (and the row) and writes nothing
CLEAN_TAMPER_CASES = {
    "split-npy-short": (lambda w: np.save(w["run"] / "split.npy", np.zeros(3, np.int8)), ["split.npy", "shape (3,)"]),
    "split-npy-value-9": (lambda w: np.save(w["run"] / "split.npy", np.array([0, 0, 0, 9, 0, 0, 0, 0], np.int8)),
                          ["split.npy: row 3: 9", "0 (train), 1 (validation) or 2"]),
    "split-npy-truncated": (_truncated_split, ["split.npy: unreadable array"]),
    "split-npy-empty": (_write("split.npy", b""), ["split.npy: unreadable array: the file is empty"]),   # "Aborted!"
    "state-json-a-list": (_write("stats/state.json", b"[]"), ["state.json", "expected a JSON object"]),
    "state-json-rounds-text": (_write("stats/state.json", b'{"complete": true, "rounds": "x"}'),
                               ["state.json: field 'rounds': 'x'"]),
    "corrections-tab-separated": (
        lambda w: pd.read_csv(w["run"] / "corrections.csv").assign(accept="no").to_csv(
            w["run"] / "corrections.csv", index=False, sep="\t"), ["missing column", "separated by tabs"]),
    "split-npy-text": (lambda w: np.save(w["run"] / "split.npy", np.array(["x"] * N_IMAGES)), ["split.npy", "<U1"]),
    "labels-npy-value-5": (lambda w: np.save(w["run"] / "labels.npy", np.full((N_IMAGES, 3), -3, np.int8)),
                           ["labels.npy: row 0, column 0", "value -3"]),
    "embeddings-rows": (lambda w: _embedding(w, np.zeros((3, 4), np.float16)), ["embeddings.npy", "(3, 4)"]),
    "embeddings-truncated": (lambda w: (_embedding(w, np.zeros((N_IMAGES, 64), np.float16)),
                                        (w["run"] / "stats" / "embeddings.npy").write_bytes(b"\x93NUMPY\x01\x00")),
                             ["embeddings.npy: unreadable array"]),
    "embeddings-record-corrupt": (lambda w: _embedding(w, np.zeros((N_IMAGES, 4), np.float16), b"{bad"),
                                  ["embeddings.json: corrupt embedding record"]),
    "logits-all-nan": (lambda w: np.save(w["run"] / "stats" / "logits.npy", np.full((N_IMAGES, 3), np.nan, np.float16)),
                       ["stats: the model's logits are NaN for every image"]),
}


@pytest.mark.parametrize("case", sorted(CLEAN_TAMPER_CASES))
def test_clean_refuses_damaged_statistics(world, case):
    tamper, fragments = CLEAN_TAMPER_CASES[case]
    tamper(world)
    before = digest(world["root"])
    assert_one_error(invoke("clean", world["run"], "--no-report"), *fragments, code=2)
    assert digest(world["root"]) == before and leftovers(world["run"]) == []


def test_clean_skips_unscored_cells_with_a_count(world):
    """Cells the model did not score (NaN logits: an image that failed to decode in
    training, or a damaged cell) keep their label and are never suggested, with a count;
    a scored cell whose score rule has no input (NaN loss_mean for --score loss) ranks last
    with a count; all-NaN embeddings skip the neighbour evidence with a note."""
    run = world["run"]
    logits = np.load(run / "stats" / "logits.npy").astype(np.float32)
    lab = np.load(run / "labels.npy")
    logits = np.where(lab == POS, -3.0, 3.0).astype(np.float16)   # every known label looks wrong
    logits[2] = np.nan   # image 3 not scored
    logits[5, 1] = np.nan   # one damaged cell
    np.save(run / "stats" / "logits.npy", logits)
    _embedding(world, np.full((N_IMAGES, 4), np.nan, np.float16))
    res = invoke("clean", run, "--no-report")
    assert res.exit_code == 0, res.output
    assert "note: 2 images have cells the model did not score" in res.output
    assert "could not be read, or a damaged stats file" in res.output   # the run lists no skipped image
    skipped = run / "skipped_images.csv"   # a run that lists them: the note names its list (or a --with-run's)
    skipped.write_text("index,image_id,file_name,reason\n2,3,x.png,missing\n")
    try:
        assert f"could not be read, listed in {skipped})" in invoke("clean", run, "--no-report").output
    finally:
        skipped.unlink()
    assert "no image got a neighbour vote" in res.output
    assert f"{N_IMAGES - 2} of {N_IMAGES} images scored: " in res.output
    assert np.isnan(np.load(run / "cells" / "p_clean.npy")[2]).all()   # what suggests nothing: tests/test_cleaning.py
    loss = np.ones((N_IMAGES, 3), np.float16)
    loss[0] = np.nan
    np.save(run / "stats" / "loss_mean.npy", loss)
    res = invoke("clean", run, "--no-report", "--score", "loss")
    assert res.exit_code == 0, res.output
    assert "3 scored cells got no value from the score rule 'loss'" in res.output
    assert (np.load(run / "cells" / "score.npy")[0] == 0).all()


def test_clean_keeps_a_reviewers_own_columns(world):
    """A column a person added to corrections.csv (a note) is not written again by clean,
    which says so and keeps the previous file beside it."""
    p = world["run"] / "corrections.csv"
    frame = pd.read_csv(p)
    frame["note"] = "checked by Ann"
    frame.to_csv(p, index=False)
    before = p.read_bytes()
    res = invoke("clean", world["run"], "--no-report")
    assert res.exit_code == 0, res.output
    assert "column(s) 'note' are not labelfix's" in res.output
    assert (world["run"] / "corrections.previous.csv").read_bytes() == before
    assert "note" not in pd.read_csv(p).columns


def test_resume_refuses_a_changed_data_file(tmp_path):
    """--resume trains on the labels the run saved: a DATA file edited since is refused
    (one line naming it), an unchanged one resumes."""
    from labelfix.data.demo import make_demo
    from labelfix.train import TrainConfig, TrainingInterrupted, train

    data = make_demo(tmp_path / "data", n_train=8, n_test=4, size=32, seed=3)["train"]
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(data), out=str(out), backbone="test_resnet", img_size=32, batch_size=4, workers=0,
                      progress=False, mix="none", randaugment=False, lr=1e-3, epochs=2)
    with pytest.raises(TrainingInterrupted):
        train(cfg, callbacks=[_InterruptAfterEpoch()], log=lambda s: None)
    original = data.read_bytes()
    coco = json.loads(original)
    coco["annotations"] = coco["annotations"][1:]   # one label removed by hand
    data.write_text(json.dumps(coco))
    before = digest(out)
    res = invoke("train", data, "--out", out, "--resume")
    assert_one_error(res, str(data), "not those the run", "started with", code=2)
    assert digest(out) == before
    data.write_bytes(original)
    res = invoke("train", data, "--out", out, "--resume")
    assert res.exit_code == 0 and "done: 2 epochs" in res.output, res.output


def test_resume_data_check_reads_only_a_modified_file(world, tmp_path):
    """check_resume_data re-reads DATA only when it was modified after the run saved its
    labels, compares with config.yaml's fingerprint, and resumes with a log line when the
    file can no longer be read as the run read it."""
    import os

    from labelfix.io import read_labels
    from labelfix.train import TrainConfig
    from labelfix.train.data import check_resume_data

    out = tmp_path / "run"
    ls = read_labels(world["labels"])
    ls.save(out)
    (out / "config.yaml").write_text(f"dataset:\n  fingerprint: {ls.fingerprint()}\n")
    cfg = TrainConfig(data=str(world["labels"]), out=str(out))
    lines = []
    os.utime(world["labels"], (1, 1))   # older than the run's labels: not read at all
    world["labels"].write_text("{ no longer JSON")
    os.utime(world["labels"], (1, 1))
    check_resume_data(cfg, lines.append)
    world["labels"].write_text(json.dumps(coco_dict(sorted(p.name for p in world["data"].glob("*.png")))))
    check_resume_data(cfg, lines.append)   # modified since, same labels: resumes
    unreadable = TrainConfig(data=str(world["labels"]), out=str(out), format="csv-wide")
    check_resume_data(unreadable, lines.append)
    assert len(lines) == 1 and "could not read" in lines[0] and "the file is JSON" in lines[0], lines
    coco = json.loads(world["labels"].read_text())
    coco["annotations"] = coco["annotations"][1:]
    world["labels"].write_text(json.dumps(coco))
    with pytest.raises(LabelfixError, match="not those the run"):
        check_resume_data(cfg, lines.append)


def test_split_of_a_fold_model_is_read(world):
    """A fold model's run directory marks its held-out rows 2 in split.npy: read, not refused."""
    from labelfix.run import load_run

    split = np.array([0, 2, 1, 0, 2, 0, 0, 0], np.int8)
    np.save(world["run"] / "split.npy", split)
    assert load_run(world["run"]).split.tolist() == split.tolist()


def test_corrections_edited_in_a_spreadsheet_are_accepted(world):
    """The positive control of the schema check: a byte-order mark, CRLF line ends, an
    accept column added by hand and the empty rows a spreadsheet saves below the table
    (`,,,,`; refused as "image_id '' is not an integer" before) are fine."""
    p = world["run"] / "corrections.csv"
    frame = pd.read_csv(p, dtype=str, keep_default_na=False)
    frame["accept"] = ["yes"] + [""] * (len(frame) - 1)
    empty_rows = ("," * (len(frame.columns) - 1) + "\r\n") * 3
    p.write_bytes(b"\xef\xbb\xbf" + (frame.to_csv(index=False, lineterminator="\r\n") + empty_rows).encode())
    res = invoke("export", "coco", world["run"], "--out", world["root"] / "clean.json", "--from", "csv")
    assert res.exit_code == 0, res.output
    assert "1 changes applied" in res.output


DECISION_CASES = {
    "decision-maybe": ("image_id,class,category_id,decision\n1,cat,1,maybe\n", "decision"),
    "decision-unknown-class": ("image_id,class,decision\n1,unicorn,accepted\n", "unicorn"),
    "decision-category-contradicts": ("image_id,class,category_id,decision\n1,cat,2,accepted\n", "does not match"),
    "decision-unknown-image": ("image_id,class,decision\n77,cat,accepted\n", "image_id 77"),
    "decision-duplicate": ("image_id,class,decision\n1,cat,accepted\n1,cat,rejected\n", "a second row"),
    "decision-missing-column": ("image_id,class\n1,cat\n", "missing"),
    "decision-empty": ("", "empty file"),
}


@pytest.mark.parametrize("case", sorted(DECISION_CASES))
def test_tampered_decisions(world, case):
    from labelfix.review.decisions import read_decisions_csv

    text, fragment = DECISION_CASES[case]
    (world["run"] / "decisions.csv").write_text(text)
    with pytest.raises(LabelfixError, match=fragment) as info:
        read_decisions_csv(world["run"])
    assert "decisions.csv" in str(info.value) and "\n" not in str(info.value)


RESUME_DAMAGE_CASES = {
    "config-yaml-not-utf8": (lambda w: (w["run"] / "config.yaml").write_bytes(
        b"# r\xe9glages\n" + (w["run"] / "config.yaml").read_bytes()), ["config.yaml", "not UTF-8 text"]),
    "config-yaml-key-twice": (lambda w: (w["run"] / "config.yaml").write_text(
        "train:\n  data: x.json\n  epochs: 1\n  epochs: 2\n"), ["config.yaml: line 4: key 'epochs' appears twice"]),
}


@pytest.mark.parametrize("case", sorted(RESUME_DAMAGE_CASES))
def test_resume_of_a_damaged_run(world, case):
    damage, fragments = RESUME_DAMAGE_CASES[case]
    damage(world)
    before = digest(world["root"])
    assert_one_error(invoke("train", "--out", world["run"], "--resume", "--epochs", "3"), *fragments, code=2)
    assert digest(world["root"]) == before


def test_yaml_merge_keys_and_source_spellings_are_read(world, train_data, tmp_path):
    """What the stricter readers must still accept: a --config file with a YAML merge key
    (`<<: *defaults`; the duplicate-key check constructed it as a key), and a source COCO
    whose file name is spelled as the reader cleans it (`./x.png` is read as `x.png`;
    export compared the raw spelling and refused an unchanged file)."""
    conf = tmp_path / "opts.yaml"
    conf.write_text("base: &base {img_size: 32, batch_size: 4}\ntrain:\n  <<: *base\n  epochs: 1\n")
    from labelfix.train.config import load_config_file

    assert load_config_file(conf) == {"img_size": 32, "batch_size": 4, "epochs": 1}
    data = json.loads(world["labels"].read_text())
    data["images"][0]["file_name"] = "./" + data["images"][0]["file_name"]
    world["labels"].write_text(json.dumps(data))
    res = invoke("export", "coco", world["run"], "--out", world["root"] / "clean.json", "--from", "csv",
                 "--decisions", "all")
    assert res.exit_code == 0, res.output


def test_what_the_stricter_checks_leave_alone(world, train_data, tmp_path):
    """Positive controls of the checks against a changed source or an unknown backbone: a
    `labelfix bench` run (its labels are the source file's plus the injected noise, so they
    differ from the file by design) still exports; a config file's backbone that the
    command line replaces is not checked (the file's name was refused before training
    started), while an unknown one from the command line is named as the option."""
    source = json.loads((world["run"] / "source.json").read_text())
    (world["run"] / "source.json").write_text(json.dumps({**source, "noise": {"kind": "flip", "rate": 0.2, "seed": 0}}))
    _annotate_source(world)
    res = invoke("export", "coco", world["run"], "--out", world["root"] / "clean.json", "--from", "csv",
                 "--decisions", "all")
    assert res.exit_code == 0, res.output
    conf = tmp_path / "opts.yaml"
    conf.write_text("backbone: nosuch_model\n")
    res = invoke("train", train_data, "--out", tmp_path / "run", "--config", conf, "--backbone", "nosuch_either")
    assert_one_error(res, "backbone 'nosuch_either': unknown timm model", code=2)
    assert str(conf) not in res.output


def test_config_yaml_types_on_resume(world):
    (world["run"] / "config.yaml").write_text("train:\n  data: x.json\n  img_size: true\n")
    res = invoke("train", "--out", world["run"], "--resume")
    assert_one_error(res, "config.yaml", "img_size", code=2)


ONNX_META_CASES = {
    "too-few-names": ({"class_names": json.dumps(["cat", "dog"])}, "2 names for a model with 3 outputs"),
    "too-many-names": ({"class_names": json.dumps(["a", "b", "c", "d"])}, "4 names for a model with 3 outputs"),
    "names-not-a-list": ({"class_names": json.dumps("cat")}, "class_names"),
    "names-not-json": ({"class_names": "[cat"}, "not valid JSON"),
    "duplicate-names": ({"class_names": json.dumps(["cat", "cat", "dog"])}, "duplicate class name"),
    "empty-name": ({"class_names": json.dumps(["cat", "", "dog"])}, "non-empty"),
    "img-size-0": ({"img_size": "0"}, "img_size"),
    "img-size-text": ({"img_size": "big"}, "unreadable value"),
    # onnxruntime refused every batch with a traceback
    "img-size-not-the-input": ({"img_size": "16"}, "img_size 16 does not match the model's input 8 x 8"),
    "std-zero": ({"std": "[0.5, 0, 0.5]"}, "std"),
    "mean-two-values": ({"mean": "[0.5, 0.5]"}, "mean"),
    "mean-nan": ({"mean": "[NaN, 0.5, 0.5]"}, "mean"),
    "threshold-2": ({"threshold": "2"}, "threshold"),
    "missing-class-names": ({"class_names": None}, "missing class_names"),
}


@pytest.mark.parametrize("case", sorted(ONNX_META_CASES))
def test_tampered_onnx_metadata(world, case):
    meta, fragment = ONNX_META_CASES[case]
    model = tiny_onnx(world["root"] / "m.onnx", **meta)
    res = invoke("predict", model, world["data"])
    line = assert_one_error(res, fragment, code=2)
    assert "m.onnx" in line


def test_predict_writes_names_that_are_not_utf8(world, tmp_path):
    """A Latin-1 file name (an old archive's) in a folder: predicted, written with \\xNN for
    the byte that is not UTF-8 and counted in a note (one such name stopped the whole
    prediction with a traceback before); --overwrite replaces the existing --out."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    first = sorted(world["data"].rglob("*.png"))[0]
    shutil.copyfile(first, folder / "plain.png")
    shutil.copyfile(first, os.fsdecode(bytes(folder) + b"/caf\xe9.png"))
    out = tmp_path / "p.csv"
    out.write_text("old\n")
    res = invoke("predict", tiny_onnx(world["root"] / "m.onnx"), folder, "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert "note: 1 file name(s) are not UTF-8 text" in res.output
    files = pd.read_csv(out)["file"].tolist()
    assert sorted(Path(f).name for f in files) == ["caf\\xe9.png", "plain.png"]


def test_predict_notes_class_names_with_the_labels_separator(world):
    model = tiny_onnx(world["root"] / "semi.onnx", class_names=json.dumps(["a;b", "c", "d"]))
    res = invoke("predict", model, world["data"], "--threshold", "0")
    assert res.exit_code == 0, res.output
    assert "note: class name(s) 'a;b' contain ';'" in res.output   # "a;b;c;d" alone could not be split back


# ====================================================================== F. label files and find_label_issues


def _coco_variant(fn):
    def build(w):
        d = json.loads(w["labels"].read_text())
        fn(d)
        p = w["data"] / "variant.json"
        p.write_text(json.dumps(d))
        return p
    return build


def _text(name: str, text: str):
    def build(w):
        p = w["data"] / name
        p.write_text(text)
        return p
    return build


LABEL_FILE_CASES = {
    "coco-duplicate-class-name": (_coco_variant(lambda d: d["categories"][1].update(name="cat")),
                                  ["categories[1] (id 2)", "duplicate class name 'cat'"]),
    "coco-blank-class-name": (_coco_variant(lambda d: d["categories"][2].update(name="  ")),
                              ["categories[2]", "non-empty"]),
    "coco-empty-class-name": (_coco_variant(lambda d: d["categories"][2].update(name="")), ["categories[2]"]),
    "wide-width-1e30": (_text("w.csv", "file_name,width,cat\nimg0.png,1e30,1\n"), ["row 2", "width"]),
    "coco-read-as-csv": (lambda w: [w["labels"], "--format", "csv-wide"],
                         ["labels.json: --format csv-wide: the file is JSON, not CSV"]),
    "wide-width-negative": (_text("w.csv", "file_name,height,cat\nimg0.png,-4,1\n"), ["row 2", "height"]),
    "wide-width-text": (_text("w.csv", "file_name,width,cat\nimg0.png,wide,1\n"), ["row 2", "width"]),
    "openimages-duplicate-display-name": (
        lambda w: _oi(w, "/m/01,Cat\n/m/02,Cat\n"), ["duplicate class name 'Cat'"]),
    "openimages-empty-display-name": (lambda w: _oi(w, "/m/01,Cat\n/m/02,\n"), ["non-empty"]),
}


def _oi(w, desc: str) -> list:
    labels = w["data"] / "oi.csv"
    labels.write_text("ImageID,LabelName,Confidence\nimg0,/m/01,1\nimg1,/m/02,0\n")
    d = w["data"] / "desc.csv"
    d.write_text(desc)
    return [labels, "--classes", d]


@pytest.mark.parametrize("case", sorted(LABEL_FILE_CASES))
def test_wrong_label_files(world, case):
    build, fragments = LABEL_FILE_CASES[case]
    target = build(world)
    args = target if isinstance(target, list) else [target]
    before = digest(world["data"])
    for command in (["info", *args, "--no-files"], _noise(args[0], world["root"] / "n.json", *args[1:])):
        res = invoke(*command)
        assert_one_error(res, *fragments, code=2)
    assert digest(world["data"]) == before and not (world["root"] / "n.json").exists()


def test_lvis_negative_overlapping_positive_is_counted(world):
    d = json.loads(world["labels"].read_text())
    for im in d["images"]:
        im["neg_category_ids"] = [1, 2, 3]          # every image: all three listed negative...
    world["labels"].write_text(json.dumps(d))      # ...though each has 1-2 annotations
    res = invoke("info", world["labels"], "--json", "--no-files")
    assert res.exit_code == 0, res.output
    notes = [ln for ln in res.output.splitlines() if ln.startswith("note: ")]
    n_pos = len({(a["image_id"], a["category_id"]) for a in d["annotations"]})
    assert len(notes) == 1 and f"{n_pos} neg_category_ids entries" in notes[0] and "annotation wins" in notes[0]
    from labelfix.io import read_labels

    with pytest.warns(UserWarning, match="annotation wins"):
        ls = read_labels(world["labels"])
    assert int((np.asarray(ls.labels) == POS).sum()) == n_pos and ls.source["lvis_conflicts"] == n_pos


class _Labels:
    rng = np.random.default_rng(0)
    given = rng.choice([-1, 0, 1], size=(40, 3)).astype(np.int8)
    probs = rng.random((40, 3))


FLI_ERRORS = {
    "labels-nan": (lambda: dict(given=np.where(_Labels.given == 1, np.nan, _Labels.given).astype(float),
                                probs=_Labels.probs), "NaN; use -1"),
    "labels-2": (lambda: dict(given=np.where(_Labels.given == 1, 2, _Labels.given), probs=_Labels.probs),
                 "must be 1, 0 or -1"),
    "labels-strings": (lambda: dict(given=[["a", "b", "c"]] * 40, probs=_Labels.probs), "must be numbers"),
    "labels-ragged": (lambda: dict(given=[[1, 0], [1]], probs=_Labels.probs), "not a rectangular"),
    "labels-1d": (lambda: dict(given=np.zeros(5), probs=np.zeros(5)), "must be (N, K)"),
    "probs-nan-cell": (lambda: dict(given=_Labels.given, probs=np.where(_Labels.probs > 0.9, np.nan, _Labels.probs)),
                       "NaN"),
    "probs-above-1": (lambda: dict(given=_Labels.given, probs=_Labels.probs * 3), "probs_are_logits=True"),
    "probs-logits": (lambda: dict(given=_Labels.given, probs=np.log(_Labels.probs / (1 - _Labels.probs))),
                     "probs_are_logits=True"),
    "probs-shape": (lambda: dict(given=_Labels.given, probs=_Labels.probs[:, :2]), "does not match"),
    "both-given-and-labels": (lambda: dict(given=_Labels.given, labels=_Labels.given, probs=_Labels.probs),
                              "not both"),
    "both-probs-and-pred_probs": (lambda: dict(given=_Labels.given, probs=_Labels.probs, pred_probs=_Labels.probs),
                                  "not both"),
    "clean-threshold-nan": (lambda: dict(given=_Labels.given, probs=_Labels.probs, clean_threshold=float("nan")),
                            "clean_threshold"),
    "two-view-out-of-range": (lambda: dict(given=_Labels.given, probs=_Labels.probs, two_view=_Labels.probs + 1),
                              "two_view"),
    "verified-not-bool": (lambda: dict(given=_Labels.given, probs=_Labels.probs, verified=_Labels.probs),
                          "verified"),
}


@pytest.mark.parametrize("case", sorted(FLI_ERRORS))
def test_find_label_issues_refuses(case):
    from labelfix.cleaning.api import find_label_issues

    kwargs, fragment = FLI_ERRORS[case]
    with pytest.raises(LabelfixError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as info:
        find_label_issues(**kwargs())
    assert "\n" not in str(info.value)


def test_find_label_issues_converts_and_aliases():
    from labelfix.cleaning.api import find_label_issues

    ref = find_label_issues(_Labels.given, _Labels.probs)
    variants = [
        find_label_issues(labels=_Labels.given.tolist(), pred_probs=_Labels.probs.tolist()),
        find_label_issues(pd.DataFrame(_Labels.given, columns=CLASSES), pd.DataFrame(_Labels.probs)),
        find_label_issues(_Labels.given.astype(float), _Labels.probs),
        find_label_issues(_Labels.given, np.log(_Labels.probs / (1 - _Labels.probs)), probs_are_logits=True),
    ]
    for v in variants:
        np.testing.assert_array_equal(v.suggested, ref.suggested)
    # an image the model did not score: a whole NaN row is allowed
    p = _Labels.probs.copy()
    p[3] = np.nan
    find_label_issues(_Labels.given, p)


_FLI_NO_TORCH = r"""
import sys
import numpy as np
import labelfix.cleaning.api as api
rng = np.random.default_rng(0)
res = api.find_label_issues(rng.choice([-1, 0, 1], size=(60, 3)).astype(np.int8), rng.random((60, 3)))
assert len(res.corrections.columns) > 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "sklearn"))
assert not loaded, loaded
print("FLI_NO_TORCH_OK")
"""


# ====================================================================== G. torch-free entry points, umask, moves

_HELP_NO_TORCH = r"""
import json, sys
from click.testing import CliRunner
from labelfix.cli import main
argvs = json.loads(sys.argv[1])
for argv in argvs:
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 0, (argv, res.output, repr(res.exception))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "sklearn", "torchvision"))
    assert not loaded, (argv, loaded[:5])
print("HELP_NO_TORCH_OK", len(argvs))
"""

HELP_ARGVS = [["--help"], ["--version"]] + [[c, "--help"] for c in
                                            ("info", "noise", "demo", "train", "clean", "review", "export",
                                             "predict", "bench")] + [["export", "coco", "--help"],
                                                                     ["export", "onnx", "--help"]]


def _fresh(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=180,
                          cwd=REPO, env=env)


def test_help_and_info_do_not_import_torch(template):
    argvs = HELP_ARGVS + [["info", str(template / "data" / "labels.json"), "--json", "--verify"],
                          ["info", str(template / "run"), "--json"]]
    proc = _fresh(_HELP_NO_TORCH, json.dumps(argvs))
    assert proc.returncode == 0 and "HELP_NO_TORCH_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_find_label_issues_does_not_import_torch():
    """``import labelfix.cleaning.api; find_label_issues(numpy arrays)`` in a fresh
    interpreter: neither torch, timm nor scikit-learn gets imported."""
    proc = _fresh(_FLI_NO_TORCH)
    assert proc.returncode == 0 and "FLI_NO_TORCH_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("umask,existing,expected", [(0o022, None, 0o644), (0o077, None, 0o600),
                                                     (0o002, None, 0o664), (0o022, 0o640, 0o640)])
def test_outputs_respect_the_umask(tmp_path, umask, existing, expected):
    p = tmp_path / "x.json"
    if existing is not None:
        p.write_text("{}")
        os.chmod(p, existing)
    old = os.umask(umask)
    try:
        atomic.write_json(p, {"a": 1})
        with atomic.atomic_memmap(tmp_path / "m.npy", (2, 2), np.int8):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(p).st_mode) == expected
    if existing is None:
        assert stat.S_IMODE(os.stat(tmp_path / "m.npy").st_mode) == expected


def test_cli_outputs_respect_the_umask(world):
    old = os.umask(0o027)
    try:
        res = invoke(*_noise(world["labels"], world["root"] / "n.json"))
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    for name in ("n.json", "n.changes.csv"):
        assert stat.S_IMODE(os.stat(world["root"] / name).st_mode) == 0o640


def test_dataset_without_readable_images_is_refused(world, tmp_path):
    for p in world["data"].glob("*.png"):
        p.unlink()
    res = invoke("train", world["labels"], "--out", tmp_path / "run", "--backbone", "test_resnet", "--img-size", "32",
                 "--epochs", "1", "--workers", "0", "--no-progress", "--mix", "none")
    assert_one_error(res, "none of the 8 training images can be read", "img0.png: missing", code=2)
    assert not (tmp_path / "run" / "checkpoints").exists()


class _InterruptAfterEpoch:
    """Ctrl-C at the end of the first epoch (the checkpoint of epoch 1 is written)."""

    def on_epoch_end(self, trainer, epoch, row):
        raise KeyboardInterrupt


@pytest.mark.usefixtures("torch_one_thread")
def test_moved_run_resumes(tmp_path, monkeypatch):
    """Start training from a relative DATA path, interrupt it after epoch 1, move the run
    directory (and change the cwd), resume: config.yaml holds an absolute data path and
    the run directory is the folder config.yaml is read from."""
    import yaml

    from labelfix.data.demo import make_demo
    from labelfix.train import TrainConfig, TrainingInterrupted, train

    data = make_demo(tmp_path / "data", n_train=8, n_test=4, size=32, seed=3)
    first = tmp_path / "first"
    monkeypatch.chdir(data["train"].parent)
    cfg = TrainConfig(data="train.json", out="../first", backbone="test_resnet", img_size=32, batch_size=4,
                      workers=0, progress=False, mix="none", randaugment=False, lr=1e-3, epochs=2)
    with pytest.raises(TrainingInterrupted):
        train(cfg, callbacks=[_InterruptAfterEpoch()], log=lambda s: None)
    doc = yaml.safe_load((first / "config.yaml").read_text())
    assert doc["train"]["data"] == str(data["train"])
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    res = invoke("train", "--out", "moved", "--resume", cwd=moved.parent)
    assert res.exit_code == 0, res.output
    assert "done: 2 epochs" in res.output
    assert len(pd.read_csv(moved / "metrics.csv")) == 2


# ====================================================================== case counts (docs/reliability.md)

#: test function -> failure class (the letters of the module docstring)
CLASS_OF = {
    "test_outputs_never_replace_inputs": "A", "test_derived_output_names_and_success_path": "A",
    "test_info_counts_hostile_files_without_hanging": "B", "test_loader_refuses_hostile_file": "B",
    "test_dataset_skips_hostile_files": "B", "test_predict_skips_hostile_files": "B",
    "test_one_decoder_for_training_and_predict": "B", "test_predict_names_a_broken_link_given_by_name": "B",
    "test_write_failure_is_one_line": "C", "test_real_full_disk": "C", "test_file_size_limit_subprocess": "C",
    "test_output_set_is_all_or_nothing": "C", "test_output_set_reads_back_and_removes_with_the_set": "C",
    "test_output_set_nested_and_spellings": "C", "test_failed_clean_keeps_the_previous_clean": "C",
    "test_what_the_stricter_checks_leave_alone": "E",
    "test_train_numeric_options": "D", "test_config_file_types": "D", "test_train_config_python_api_refuses_nan": "D",
    "test_other_numeric_options": "D", "test_device_without_gpu": "D", "test_unused_options_are_refused": "D",
    "test_tampered_run_files": "E", "test_tampered_decisions": "E",
    "test_corrections_edited_in_a_spreadsheet_are_accepted": "E", "test_config_yaml_types_on_resume": "E",
    "test_tampered_onnx_metadata": "E", "test_clean_refuses_damaged_statistics": "E",
    "test_predict_notes_class_names_with_the_labels_separator": "E",
    "test_clean_skips_unscored_cells_with_a_count": "E", "test_clean_keeps_a_reviewers_own_columns": "E",
    "test_resume_refuses_a_changed_data_file": "E", "test_resume_data_check_reads_only_a_modified_file": "E",
    "test_split_of_a_fold_model_is_read": "E", "test_resume_of_a_damaged_run": "E",
    "test_predict_writes_names_that_are_not_utf8": "E", "test_yaml_merge_keys_and_source_spellings_are_read": "E",
    "test_wrong_label_files": "F", "test_lvis_negative_overlapping_positive_is_counted": "F",
    "test_find_label_issues_refuses": "F", "test_find_label_issues_converts_and_aliases": "F",
    "test_find_label_issues_does_not_import_torch": "F",
    "test_help_and_info_do_not_import_torch": "G", "test_outputs_respect_the_umask": "G",
    "test_cli_outputs_respect_the_umask": "G", "test_dataset_without_readable_images_is_refused": "G",
    "test_moved_run_resumes": "G",
}



def test_every_case_is_counted_in_a_class():
    """docs/reliability.md's case counts come from CLASS_OF: a new test must say its class."""
    tests = {name for name, obj in globals().items() if name.startswith("test_") and callable(obj)}
    assert sorted(tests - set(CLASS_OF) - {"test_every_case_is_counted_in_a_class"}) == []


if __name__ == "__main__":
    # `.venv/bin/python tests/test_reliability.py`: the case counts per class, from the
    # parametrization as pytest collects it
    from collections import Counter

    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", __file__], capture_output=True,
                         text=True, cwd=REPO).stdout
    funcs = [ln.split("::")[1].split("[")[0] for ln in out.splitlines() if "::" in ln]
    funcs = [f for f in funcs if f != "test_every_case_is_counted_in_a_class"]
    missing = sorted(set(funcs) - set(CLASS_OF))
    assert not missing, f"add to CLASS_OF: {missing}"
    counts = Counter(CLASS_OF[f] for f in funcs)
    for letter in sorted(counts):
        print(f"{letter}: {counts[letter]}")
    print(f"total: {len(funcs)}")
