"""ONNX export (parity with torch per head, metadata, fallback, fp16), torch-free
prediction (preprocessing vs timm, decoding, skipping), and the two CLI commands."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from labelfix.cli import main
from labelfix.errors import LabelfixError
from labelfix.export import onnx as lo
from labelfix.export.predict import OTHER_EXTENSION, collect_images, load_image, predict, preprocess, sigmoid
from labelfix.models import create_model, model_config

REPO = Path(__file__).resolve().parents[1]
S = 64
K = 5
NAMES = ["cat", "dog", "café", "person", "car"]
SMALL = {
    "linear": {},
    "q2l": {"hidden_dim": 32, "num_heads": 4, "dim_feedforward": 64},
    "mldecoder": {"embed_dim": 32, "num_heads": 4, "dim_feedforward": 64, "num_groups": 2},
}


def _model(head: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model("test_resnet", head, num_classes=K, img_size=S, **SMALL[head]).eval()


def _export(model, path, **kw):
    cfg = model_config(model)
    return lo.export_onnx(model, path, class_names=NAMES, img_size=S, mean=cfg["mean"],
                          std=cfg["std"], **kw)


def _ort_logits(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """head -> (torch model, onnx path), exported once per module."""
    d = tmp_path_factory.mktemp("onnx")
    out = {}
    for head in SMALL:
        model = _model(head)
        out[head] = (model, _export(model, d / f"{head}.onnx"))
    return out


@pytest.mark.parametrize("head", ["linear", "q2l", "mldecoder"])
@pytest.mark.parametrize("batch", [1, 7])
def test_parity_per_head(exported, head, batch):
    model, path = exported[head]
    x = np.random.default_rng(batch).standard_normal((batch, 3, S, S), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = _ort_logits(path, x)
    assert got.shape == (batch, K)
    assert np.max(np.abs(got - ref)) <= 1e-4


def test_metadata_and_graph(exported):
    _, path = exported["q2l"]
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == NAMES
    assert meta["img_size"] == str(S) and json.loads(meta["input_size"]) == [3, S, S]
    assert json.loads(meta["mean"]) == json.loads(meta["std"]) == [0.5, 0.5, 0.5]  # test_resnet
    assert float(meta["threshold"]) == 0.5 and meta["precision"] == "fp32"
    assert meta["interpolation"] == "bilinear" and meta["crop_mode"] == "squash"
    assert meta["labelfix_version"]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.HasField("dim_param")
    # no per-group / per-class Python loop unrolled into the graph
    assert len(proto.graph.node) < 400


def test_torchscript_fallback_is_logged_and_exact(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("dynamo says no")

    monkeypatch.setattr(lo, "_export_dynamo", broken)
    model = _model("mldecoder", seed=1)
    with caplog.at_level(logging.WARNING, logger="labelfix.export.onnx"):
        path = _export(model, tmp_path / "ts.onnx")
    assert "TorchScript exporter" in caplog.text and "dynamo says no" in caplog.text
    x = np.random.default_rng(0).standard_normal((7, 3, S, S), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(_ort_logits(path, x) - ref)) <= 1e-4


def test_failed_self_check_writes_nothing(exported, tmp_path, monkeypatch):
    model, path = exported["linear"]
    monkeypatch.setattr(lo, "_export_proto", lambda *a: (onnx.load(str(path)), "dynamo"))  # skip re-export
    monkeypatch.setattr(lo, "FP32_TOLERANCE", -1.0)  # any difference fails
    with pytest.raises(LabelfixError, match="self-check"):
        _export(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_fp16_export(tmp_path):
    model = _model("linear", seed=2)
    path = _export(model, tmp_path / "half.onnx", fp16=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)"
    assert sess.get_modelmeta().custom_metadata_map["precision"] == "fp16"
    x = np.random.default_rng(0).standard_normal((3, 3, S, S), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = sess.run(None, {"input": x})[0]
    assert got.dtype == np.float32
    diff = np.max(np.abs(got - ref))
    assert 0 < diff <= lo.FP16_RELATIVE_TOLERANCE * max(1.0, np.max(np.abs(ref)))


def test_export_argument_errors(tmp_path):
    model = _model("linear")
    with pytest.raises(LabelfixError, match="opset"):
        _export(model, tmp_path / "a.onnx", opset=17)
    with pytest.raises(LabelfixError, match="5 outputs"):
        lo.export_onnx(model, tmp_path / "a.onnx", class_names=["a"], img_size=S,
                       mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(LabelfixError, match="check inputs"):
        _export(model, tmp_path / "a.onnx", check_inputs=np.zeros((2, 3, 8, 8), np.float32))
    assert not (tmp_path / "a.onnx").exists()


# ---------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("crop_mode", ["squash", "center"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("wh", [(53, 37), (30, 90), (64, 64)])
def test_preprocess_matches_timm_eval_transform(crop_mode, interpolation, wh):
    from timm.data import create_transform

    rng = np.random.default_rng(sum(wh))
    img = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tf = create_transform(input_size=S, is_training=False, crop_pct=1.0, crop_mode=crop_mode,
                          interpolation=interpolation, mean=mean, std=std)
    ref = tf(img).numpy()
    got = preprocess(img, img_size=S, mean=mean, std=std, interpolation=interpolation, crop_mode=crop_mode)
    assert got.shape == ref.shape == (3, S, S) and got.dtype == np.float32
    assert np.max(np.abs(got - ref)) <= 1e-6


def test_load_image_exif_16bit_palette(tmp_path):
    img = Image.new("RGB", (20, 10), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "exif.jpg", exif=exif)
    assert load_image(tmp_path / "exif.jpg").size == (10, 20)

    Image.fromarray(np.array([[0, 65535, 100 * 256 + 7]], dtype=np.uint16)).save(tmp_path / "g16.png")
    got = np.asarray(load_image(tmp_path / "g16.png"))
    assert got.shape == (1, 3, 3) and got[0, :, 0].tolist() == [0, 255, 100]
    assert (got[..., 0] == got[..., 2]).all()

    pal = Image.new("P", (4, 4))
    pal.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    pal.save(tmp_path / "pal.png")
    assert np.asarray(load_image(tmp_path / "pal.png"))[0, 0].tolist() == [255, 0, 0]


# ---------------------------------------------------------------- predict


def _images(d: Path, n: int = 5) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        p = d / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 50, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_predict_matches_torch_and_skips_unreadable(exported, tmp_path, caplog):
    model, path = exported["linear"]
    files = _images(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(b"not an image")
    inputs = files[:2] + [bad] + files[2:]
    with caplog.at_level(logging.WARNING, logger="labelfix.export.predict"):
        df = predict(path, inputs, batch_size=2, progress=False)
    assert "skipped 1 unreadable" in caplog.text
    assert df.attrs["skipped"][0][0] == str(bad)
    assert list(df.columns) == ["file", "labels", *NAMES]
    assert df["file"].tolist() == [str(f) for f in files]

    mean = std = (0.5, 0.5, 0.5)  # test_resnet's data config
    x = np.stack([preprocess(load_image(f), img_size=S, mean=mean, std=std) for f in files])
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    probs = df[NAMES].to_numpy()
    assert np.max(np.abs(probs - ref)) <= 1e-5
    for row, p in zip(df["labels"], probs):
        assert row == ";".join(n for n, v in zip(NAMES, p) if v >= 0.5)

    # batch size does not change results; an explicit threshold overrides the model's
    df2 = predict(path, files, batch_size=32, threshold=0.0, progress=False)
    assert np.allclose(df2[NAMES].to_numpy(), probs, atol=1e-6)
    assert set(df2["labels"]) == {";".join(NAMES)}


def test_predict_errors(exported, tmp_path):
    _, path = exported["linear"]
    with pytest.raises(LabelfixError, match="not found"):
        predict(tmp_path / "none.onnx", [])
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(LabelfixError, match="not a readable ONNX model"):
        predict(tmp_path / "junk.onnx", [])
    plain = tmp_path / "plain.onnx"
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(plain))
    with pytest.raises(LabelfixError, match="metadata: missing class_names"):
        predict(plain, [])
    with pytest.raises(LabelfixError, match="no such file"):
        collect_images([tmp_path / "nowhere"])
    # a file given and inside a given folder, or given twice, is predicted once (before: twice)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(folder / name)
    skipped = []
    files = collect_images([folder / "b.png", folder, folder / "b.png"], skipped=skipped)
    assert files == [folder / "b.png", folder / "a.png"]
    assert skipped == [(str(folder / "b.png"), "listed twice: predicted once")] * 2
    # a folder's files are read by extension (.jfif is JPEG too); the others are listed, not dropped silently
    Image.new("RGB", (8, 8)).save(folder / "c.jfif", format="JPEG")
    (folder / "notes.txt").write_text("not an image")
    skipped = []
    assert collect_images([folder], skipped=skipped) == [folder / "a.png", folder / "b.png", folder / "c.jfif"]
    assert skipped == [(str(folder / "notes.txt"), OTHER_EXTENSION)]


def test_predict_says_in_one_line_when_onnxruntime_cannot_run_the_model(exported, tmp_path, monkeypatch):
    from labelfix.export import predict as predict_mod

    _, path = exported["linear"]
    session, info = predict_mod.open_session(path)

    class Failing:   # what onnxruntime raises for inputs the graph refuses
        def __getattr__(self, name):
            return getattr(session, name)

        def run(self, *args, **kwargs):
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions\nmore")

    monkeypatch.setattr(predict_mod, "open_session", lambda *a, **k: (Failing(), info))
    _images(tmp_path / "imgs", n=1)
    with pytest.raises(LabelfixError, match=r"onnxruntime could not run the model \(\[ONNXRuntimeError\] : 2 : "
                                            r"INVALID_ARGUMENT : Got invalid dimensions\)$"):
        predict(path, collect_images([tmp_path / "imgs"]), progress=False)


def test_sigmoid_no_overflow():
    x = np.array([-1000.0, 0.0, 1000.0], np.float32)
    with np.errstate(all="raise"):
        assert sigmoid(x).tolist() == [0.0, 0.5, 1.0]


_NO_TORCH = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "timm", "torchvision"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("the import blocker does not work")
from click.testing import CliRunner
from labelfix.cli import main
model, folder, out = sys.argv[1:4]
res = CliRunner().invoke(main, ["predict", model, folder, "--out", out, "--batch-size", "2"])
print(res.output)
assert res.exit_code == 0, (res.output, repr(res.exception))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "torchvision"))
assert not loaded, loaded
print("NO_TORCH_OK")
"""


def test_predict_cli_runs_without_torch(exported, tmp_path):
    _, path = exported["mldecoder"]
    _images(tmp_path / "imgs", n=3)
    out = tmp_path / "preds.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(path), str(tmp_path / "imgs"), str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "NO_TORCH_OK" in proc.stdout
    df = pd.read_csv(out)
    assert len(df) == 3 and list(df.columns) == ["file", "labels", *NAMES]


# ---------------------------------------------------------------- CLI on a run directory


def _fake_run(root: Path) -> tuple[Path, dict]:
    """A run directory with the files that export reads (docs/internals.md)."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    models = {}
    for which, seed in (("best", 0), ("last", 1)):
        model = _model("linear", seed=seed)
        models[which] = model
        torch.save({
            "model": model.state_dict(), "ema": None, "optimizer": {}, "scheduler": {},
            "epoch": seed, "global_step": 10 * seed, "rng": {}, "sampler": {},
            "model_config": model_config(model), "classes": NAMES, "run_fingerprint": "f",
        }, run / "checkpoints" / f"{which}.pt")
    (run / "classes.json").write_text(
        json.dumps([{"name": n, "category_id": i + 1} for i, n in enumerate(NAMES)]), encoding="utf-8")
    return run, models


def test_cli_export_and_predict(tmp_path):
    run, models = _fake_run(tmp_path)
    runner = CliRunner()
    out = tmp_path / "model.onnx"
    res = runner.invoke(main, ["export", "onnx", str(run), "--out", str(out), "--checkpoint", "last"])
    assert res.exit_code == 0, res.output
    x = np.random.default_rng(0).standard_normal((2, 3, S, S), dtype=np.float32)
    with torch.no_grad():
        ref_last = models["last"](torch.from_numpy(x)).numpy()
        ref_best = models["best"](torch.from_numpy(x)).numpy()
    got = _ort_logits(out, x)
    assert np.max(np.abs(got - ref_last)) <= 1e-4 and np.max(np.abs(got - ref_best)) > 1e-3
    meta = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    assert meta["interpolation"] == "bilinear"  # test_resnet's timm data config

    imgs = _images(tmp_path / "imgs", n=3)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG broken")
    res = runner.invoke(main, ["predict", str(out), str(tmp_path / "imgs"), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    assert "predicted 3 image(s), skipped 1 unreadable" in res.output
    df = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert df["file"].tolist() == [str(p) for p in imgs]

    # nothing readable: an error naming the first file and why, no output written
    (tmp_path / "empty.png").write_bytes(b"")
    res = runner.invoke(main, ["predict", str(out), str(tmp_path / "empty.png"), str(tmp_path / "imgs" / "bad.png"),
                               "--out", str(tmp_path / "none.csv")])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1] == (f"error: {tmp_path / 'empty.png'}: UnidentifiedImageError: not an "
                                                   f"image file PIL can read (unknown format, or empty); none of "
                                                   f"the 2 image(s) could be read")
    assert "skipped" not in res.output   # the error line only (a warning line came before it)
    assert not (tmp_path / "none.csv").exists()

    res = runner.invoke(main, ["predict", str(out), str(imgs[0]), "--threshold", "0"])
    assert res.exit_code == 0
    assert f"{imgs[0]},{';'.join(NAMES)}" in res.output

    res = runner.invoke(main, ["predict", str(out), str(imgs[0]), "--out", str(tmp_path / "p.txt")])
    assert res.exit_code == 2 and "must end in .csv or .parquet" in res.output


def test_cli_export_errors(tmp_path):
    run, _ = _fake_run(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["export", "onnx", str(run), "--out", str(tmp_path / "m.onnx"), "--ema"])
    assert res.exit_code == 2 and "best.pt: --ema: this run was trained without EMA weights" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(main, ["export", "onnx", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "run directory not found" in res.output
    (run / "checkpoints" / "best.pt").write_bytes(b"truncated")
    res = runner.invoke(main, ["export", "onnx", str(run), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "best.pt: not a readable labelfix checkpoint" in res.output
    assert not (tmp_path / "m.onnx").exists()


def test_read_class_names_formats(tmp_path):
    p = tmp_path / "classes.json"
    for obj in (["a", "b"], [{"name": "a"}, {"name": "b"}], {"name": {"1": "b", "0": "a"}},
                {"name": ["a", "b"], "category_id": [1, 2]}):
        p.write_text(json.dumps(obj))
        assert lo.read_class_names(p) == ["a", "b"]
    p.write_text("{}")
    with pytest.raises(LabelfixError, match="no class names"):
        lo.read_class_names(p)
