"""labelfix train: run-directory files, exact resume, config round trip, failure modes,
and the engine's small pure functions (sampler, schedule, mAP)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from sklearn.metrics import average_precision_score

from labelfix.errors import LabelfixError
from labelfix.train import TrainConfig, train
from labelfix.train.engine import Trainer
from labelfix.train.optim import build_amp, lr_factor, optimizer_step
from labelfix.train.metrics import class_groups, map_report, per_class_ap
from labelfix.train.sampler import EpochBatchSampler, ShardSampler
from labelfix.train.stats import cell_bce


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    from labelfix.data.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("tiny"), n_train=32, n_test=16, size=32, seed=1)


def cfg_for(tiny, out, **kw) -> TrainConfig:
    base = dict(data=str(tiny["train"]), out=str(out), backbone="test_resnet", img_size=32, epochs=2,
                batch_size=8, workers=0, progress=False, lr=1e-3, warmup_epochs=0.5, mix="none",
                randaugment=False)
    base.update(kw)
    return TrainConfig(**base)


def quiet(_line):
    pass


class Stop(Exception):
    pass


class StopAt:
    """Simulates a kill: raises after (epoch, step) without letting the engine clean up."""

    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def on_step(self, trainer, epoch, step):
        if (epoch, step) == self.at:
            raise Stop


class Snapshot:
    """Copies stats/ after every epoch (to check the running mean by hand)."""

    def __init__(self):
        self.logits, self.loss_mean = [], []

    def on_epoch_end(self, trainer, epoch, row):
        self.logits.append(np.load(trainer.out / "stats" / "logits.npy").astype(np.float32))
        self.loss_mean.append(np.load(trainer.out / "stats" / "loss_mean.npy"))


def test_run_writes_every_file(tiny, tmp_path):
    from labelfix.models import load_checkpoint, model_from_checkpoint

    snap = Snapshot()
    out = tmp_path / "run"
    train(cfg_for(tiny, out, loss="role", ema=True, val_split=0.25), callbacks=[snap], log=quiet)
    for name in ("config.yaml", "classes.json", "images.csv", "labels.npy", "source.json", "split.npy",
                 "checkpoints/last.pt", "checkpoints/best.pt", "metrics.csv", "stats/logits.npy",
                 "stats/loss_mean.npy", "stats/role_logits.npy", "stats/state.json"):
        assert (out / name).is_file(), name
    labels = np.load(out / "labels.npy")
    n, k = labels.shape
    split = np.load(out / "split.npy")
    assert split.dtype == np.int8 and split.sum() == 8
    logits = np.load(out / "stats" / "logits.npy")
    assert logits.dtype == np.float16 and logits.shape == (n, k) and np.isfinite(logits).all()
    role = np.load(out / "stats" / "role_logits.npy")
    assert role.dtype == np.float16 and role.shape == (n, k)
    # loss_mean is the mean over epochs of the BCE against the given label
    np.testing.assert_allclose(snap.loss_mean[0], cell_bce(snap.logits[0], labels), rtol=1e-6)
    expect = (cell_bce(snap.logits[0], labels) + cell_bce(snap.logits[1], labels)) / 2
    np.testing.assert_allclose(snap.loss_mean[1], expect, rtol=1e-5, atol=1e-6)
    assert json.loads((out / "stats" / "state.json").read_text()) == {
        "epochs_recorded": 2, "last_epoch": 1, "complete": True}
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    for col in ("train_loss", "val_map", "val_map_many", "val_map_medium", "val_map_few", "val_map_ema",
                "lr", "seconds"):
        assert col in metrics.columns, col
    # validation mAP is computed from the stats pass on the held-out rows
    val = split == 1
    assert metrics["val_map"].iloc[-1] == pytest.approx(
        map_report(logits[val].astype(np.float32), labels[val], np.zeros(k))["map"], rel=1e-6)
    doc = yaml.safe_load((out / "config.yaml").read_text())
    assert doc["train"]["loss"] == "role" and doc["versions"]["torch"] == torch.__version__
    from labelfix.train.config import run_commit, source_commit

    # the code that trained the run, when it runs from a git checkout (make env's editable install)
    assert doc["versions"].get("labelfix_commit", "") == source_commit()
    assert run_commit(out) == (source_commit() or "unknown") and run_commit(tmp_path / "nothing") == "unknown"
    assert len(doc["dataset"]["fingerprint"]) == 64
    # options left at an "it depends" default: what this run used (ROLE: no class-prior bias)
    assert doc["train"]["prior_bias"] is None and doc["dataset"]["resolved"] == {"prior_bias": False, "workers": 0}
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")   # weights_only=True inside
    for key in ("model", "ema", "optimizer", "scheduler", "epoch", "global_step", "rng", "sampler",
                "model_config", "classes", "run_fingerprint"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 2 * 3
    assert len(ckpt["optimizer"]["param_groups"]) == 3           # decay, no-decay, ROLE table
    assert ckpt["optimizer"]["param_groups"][2]["initial_lr"] == pytest.approx(10 * 1e-3)
    model = model_from_checkpoint(ckpt)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, k)
    # `labelfix info RUN` says it read a run (before: "(coco)", the format of its DATA file)
    from labelfix.cli import main

    res = CliRunner().invoke(main, ["info", str(out), "--no-files"])
    assert res.exit_code == 0 and "(labelfix run, labels from coco):" in " ".join(res.output.split()), res.output


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_run(a: Path, b: Path):
    ca, cb = _weights(a / "checkpoints" / "last.pt"), _weights(b / "checkpoints" / "last.pt")
    assert ca["global_step"] == cb["global_step"]
    for key, value in ca["model"].items():
        assert torch.equal(value, cb["model"][key]), key
    for name in ("logits.npy", "loss_mean.npy"):
        np.testing.assert_array_equal(np.load(a / "stats" / name), np.load(b / "stats" / name))
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    np.testing.assert_array_equal(ma["train_loss"].to_numpy(), mb["train_loss"].to_numpy())
    np.testing.assert_array_equal(ma["stats_loss"].to_numpy(), mb["stats_loss"].to_numpy())


def test_resume_after_kill_equals_uninterrupted(tiny, tmp_path):
    kw = dict(mix="logicmix", randaugment=True, loss="an-ls", accum_steps=2, epochs=3)
    ref = tmp_path / "ref"
    train(cfg_for(tiny, ref, **kw), log=quiet)
    run = tmp_path / "run"
    with pytest.raises(Stop):   # killed in the middle of epoch 2
        train(cfg_for(tiny, run, **kw), callbacks=[StopAt(1, 2)], log=quiet)
    assert _weights(run / "checkpoints" / "last.pt")["epoch"] == 1
    doc = yaml.safe_load((run / "config.yaml").read_text())   # as if older code trained epoch 1
    doc["versions"]["labelfix_commit"] = "0ld0000"
    (run / "config.yaml").write_text(yaml.safe_dump(doc))
    lines = []
    train(cfg_for(tiny, run, resume=True, **kw), log=lines.append)
    _assert_same_run(ref, run)
    from labelfix.train.config import run_commit, source_commit

    assert sum("trained so far by labelfix 0ld0000 and is resumed by" in x for x in lines) == 1

    assert run_commit(run) == f"0ld0000, {source_commit() or 'unknown'}"   # both code states named


@pytest.mark.parametrize("kw, kill_epoch", [
    ({}, 0),
    # BalanceMix after its warm-up: the epoch's steps counted cell states and re-labeling
    # views, which the re-done end of epoch must still report
    (dict(mix="balancemix", balancemix_warmup=1, balancemix_refine="batch", randaugment=True, epochs=3), 1),
])
def test_resume_after_kill_during_statistics(tiny, tmp_path, monkeypatch, kw, kill_epoch):
    """Killed after the checkpoint but while the stats pass ran: the epoch is finalized on
    resume, counted once in loss_mean, and its metrics row is the uninterrupted run's."""
    ref = tmp_path / "ref"
    train(cfg_for(tiny, ref, **kw), log=quiet)
    run = tmp_path / "run"
    from labelfix.train import evaluate

    original = evaluate.finalize_epoch

    def dying(trainer, epoch, info, record_mean):
        if epoch == kill_epoch:
            original(trainer, epoch, info, record_mean)
            # simulate a kill after loss_mean was updated but before "complete"
            from labelfix.train.stats import write_state

            write_state(trainer.out / "stats", epoch + 1, epoch, complete=False)
            raise Stop
        return original(trainer, epoch, info, record_mean)

    monkeypatch.setattr(evaluate, "finalize_epoch", dying)
    with pytest.raises(Stop):
        train(cfg_for(tiny, run, **kw), log=quiet)
    monkeypatch.setattr(evaluate, "finalize_epoch", original)
    train(cfg_for(tiny, run, resume=True, **kw), log=quiet)
    _assert_same_run(ref, run)
    ma, mb = pd.read_csv(ref / "metrics.csv"), pd.read_csv(run / "metrics.csv")
    assert list(ma.columns) == list(mb.columns)
    counts = [c for c in ma.columns if c.startswith(("cells_", "relabel_", "rescored_"))]
    assert bool(kw) == bool(counts)
    pd.testing.assert_frame_equal(ma[counts], mb[counts])


def test_default_workers_never_exceed_the_cpus(monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert TrainConfig().loader_workers == 2   # default 4, at most the CPU count
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert TrainConfig().loader_workers == 4
    assert TrainConfig(workers=8).loader_workers == 8 and TrainConfig(workers=0).loader_workers == 0


def test_config_file_round_trip(tiny, tmp_path):
    from labelfix.cli import main
    from labelfix.train.config import read_run_config

    conf = tmp_path / "opts.yaml"
    conf.write_text(yaml.safe_dump({"backbone": "test_resnet", "img-size": 32, "epochs": 5, "batch_size": 8,
                                    "workers": 0, "mix": "none", "lr": 0.01, "loss_kwargs": {}}))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(tiny["train"]), "--out", str(out), "--config", str(conf),
                                    "--epochs", "1", "--no-progress", "--no-randaugment", "--hflip", "0"])
    assert res.exit_code == 0, res.output
    saved = read_run_config(out)
    assert saved.epochs == 1 and saved.lr == 0.01 and saved.img_size == 32 and saved.randaugment is False
    assert saved.hflip == 0.0
    # the run's config.yaml is itself a valid --config file giving the same options
    again = TrainConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text())["train"])
    assert again == saved
    res = CliRunner().invoke(main, ["train", str(tiny["train"]), "--out", str(tmp_path / "y"), "--hflip", "1.5"])
    assert res.exit_code == 2 and "--hflip: 1.5 is not in [0, 1]" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    res = CliRunner().invoke(main, ["train", str(tiny["train"]), "--out", str(tmp_path / "x"),
                                    "--config", str(bad)])
    assert res.exit_code == 2 and "unknown option(s): epochz" in res.output
    # `classes:` is --classes (the field is class_descriptions): read, and refused beside it
    from labelfix.train.config import load_config_file

    bad.write_text("classes: descriptions.csv\n")
    assert load_config_file(bad) == {"class_descriptions": "descriptions.csv"}
    bad.write_text("classes: a.csv\nclass_descriptions: b.csv\n")
    with pytest.raises(LabelfixError, match="classes and class_descriptions are the same option"):
        load_config_file(bad)


def test_a_wide_csv_trains_and_resumes_with_its_ignored_columns(tiny, tmp_path):
    # the names given with --ignore-column and --file-column are the run's reading options:
    # recorded, and a --resume without them reads the file as the run did
    from labelfix.cli import main
    from labelfix.io import read_labels
    from labelfix.train.config import read_run_config

    ls = read_labels(tiny["train"])
    table = pd.DataFrame(ls.labels, columns=ls.class_names).replace(-1, "")
    table.insert(0, "view", "AP")
    table.insert(0, "Path", ls.images["file_name"])
    wide = tmp_path / "labels.csv"
    table.to_csv(wide, index=False)
    out = tmp_path / "run"
    args = ["--images", str(ls.image_root), "--file-column", "Path", "--backbone", "test_resnet", "--img-size", "32", "--batch-size", "8",
            "--workers", "0", "--mix", "none", "--no-randaugment", "--no-progress"]
    res = CliRunner().invoke(main, ["train", str(wide), "--out", str(out), "--epochs", "1", *args])
    assert res.exit_code == 2 and "column 'view': value 'AP'" in res.output and not out.exists()
    res = CliRunner().invoke(main, ["train", str(wide), "--out", str(out), "--epochs", "1", "--ignore-column",
                                    "view", *args])
    assert res.exit_code == 0, res.output
    assert read_run_config(out).ignore_columns == ["view"] and read_run_config(out).file_column == "Path"
    res = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(out / "metrics.csv")) == 2
    np.testing.assert_array_equal(np.load(out / "labels.npy"), ls.labels)
    # export coco writes a conversion of the run's labels: an edit made to the CSV after
    # training was lost without a word (a user's journey); refused now, read as the run read it
    assert CliRunner().invoke(main, ["clean", str(out)]).exit_code == 0
    original, stamp = wide.read_bytes(), wide.stat()
    edited = table.astype(str)
    edited.iloc[0, 2] = "0" if edited.iloc[0, 2] == "1" else "1"
    edited.to_csv(wide, index=False)
    later = (out / "labels.npy").stat().st_mtime + 10
    os.utime(wide, (later, later))
    res = CliRunner().invoke(main, ["export", "coco", str(out), "--out", str(tmp_path / "clean.json")])
    assert res.exit_code == 2 and "labels.csv: 1 label(s) changed after training (first: image" in res.output, \
        res.output
    assert not (tmp_path / "clean.json").exists()
    # rows sorted and columns moved are no edit: lined up by file name and class name
    table.iloc[::-1, [0, 1, *range(table.shape[1] - 1, 1, -1)]].to_csv(wide, index=False)
    os.utime(wide, (later, later))
    res = CliRunner().invoke(main, ["export", "coco", str(out), "--out", str(tmp_path / "clean.json")])
    assert res.exit_code == 0, res.output
    (tmp_path / "clean.json").unlink()
    (tmp_path / "clean.changes.csv").unlink()
    table.iloc[1:].to_csv(wide, index=False)   # an image gone
    os.utime(wide, (later, later))
    res = CliRunner().invoke(main, ["export", "coco", str(out), "--out", str(tmp_path / "clean.json")])
    assert res.exit_code == 2 and "the run's image" in res.output and "is not in it" in res.output, res.output
    wide.write_bytes(original)   # restored: the same labels (read again, since the file is newer than the run's)
    res = CliRunner().invoke(main, ["export", "coco", str(out), "--out", str(tmp_path / "clean.json")])
    assert res.exit_code == 0, res.output
    os.utime(wide, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    res = CliRunner().invoke(main, ["info", str(wide), "--no-files", "--ignore-column", "view", "--file-column",
                                    "Path", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["num_classes"] == ls.num_classes
    # resumed with other reading options: refused, naming the options as the command line has them
    res = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--epochs", "3", "--ignore-column", "view",
                                    "--ignore-column", ls.class_names[0]])
    assert res.exit_code == 2 and "--resume with different option(s) --ignore-column;" in res.output, res.output
    conf = tmp_path / "c.yaml"
    conf.write_text("ignore-column: [view]\nfile_column: Path\n")   # the option's own name is a key too
    from labelfix.train.config import load_config_file

    assert load_config_file(conf) == {"ignore_columns": ["view"], "file_column": "Path"}
    conf.write_text("ignore_columns: view\n")   # a name, not a list of names
    res = CliRunner().invoke(main, ["train", str(wide), "--out", str(tmp_path / "r2"), "--config", str(conf)])
    assert res.exit_code == 2 and "ignore_columns: 'view' is not a list of names" in res.output


def test_resume_refuses_changed_options_and_existing_run(tiny, tmp_path):
    out = tmp_path / "run"
    train(cfg_for(tiny, out, epochs=1), log=quiet)
    with pytest.raises(LabelfixError, match="already holds a run"):
        train(cfg_for(tiny, out, epochs=1), log=quiet)
    with pytest.raises(LabelfixError, match="--lr"):
        train(cfg_for(tiny, out, epochs=2, lr=0.5, resume=True), log=quiet)
    train(cfg_for(tiny, out, epochs=2, resume=True), log=quiet)
    config = (out / "config.yaml").read_text()
    with pytest.raises(LabelfixError, match="--epochs 1, but the run has trained 2 epochs"):
        train(cfg_for(tiny, out, epochs=1, resume=True), log=quiet)
    assert (out / "config.yaml").read_text() == config   # the refused resume wrote nothing
    lines = []
    train(cfg_for(tiny, out, epochs=2, resume=True), log=lines.append)
    assert any("all 2 epochs trained; raise --epochs" in line for line in lines)
    # the resumed run's config.yaml starts a new run with the same options (before: it
    # recorded resume: true, and a new --out had "no checkpoint to resume from")
    assert yaml.safe_load(config)["train"]["resume"] is False
    from labelfix.cli import main

    res = CliRunner().invoke(main, ["train", str(tiny["train"]), "--out", str(tmp_path / "new"), "--config",
                                    str(out / "config.yaml"), "--epochs", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    # nothing to train: no "training N images" line, and the embedding is reused silently
    assert not any(line.startswith("training ") or "embedding " in line for line in lines), lines
    # a config.yaml edited by hand to an unresolved method: name it to resume, never a traceback
    doc = yaml.safe_load(config)
    run_mix = doc["train"]["mix"]
    doc["train"]["mix"] = "auto"
    (out / "config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(LabelfixError, match="mix: auto: the run does not record .* --mix naming it"):
        train(cfg_for(tiny, out, epochs=3, resume=True, mix="auto"), log=quiet)
    train(cfg_for(tiny, out, epochs=3, resume=True, mix=run_mix), log=quiet)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["mix"] == run_mix
    # an option edited in config.yaml (the optimizer state would win, the file would say
    # otherwise): refused through the CLI, which takes the run's options from the file
    doc = yaml.safe_load((out / "config.yaml").read_text())
    doc["train"]["lr"] = 0.5
    (out / "config.yaml").write_text(yaml.safe_dump(doc))
    edited = (out / "config.yaml").read_bytes()
    res = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--epochs", "4", "--no-progress"])
    assert res.exit_code == 2 and "--lr 0.5 (trained with" in res.output and "config.yaml" in res.output, res.output
    assert (out / "config.yaml").read_bytes() == edited


def test_loss_auto_follows_the_labels_and_resumes_as_resolved(tiny, tmp_path):
    """--loss auto (the default): masked BCE on labels with negatives; AN-LS (AN from
    pretrained weights) on positive-only labels, where masked BCE would learn to call every
    cell positive;
    BalanceMix keeps BCE (it trains missing labels as negatives itself). The resolved
    loss is what config.yaml records and what a resume continues with."""
    from labelfix.data.noise import write_noisy_coco
    from labelfix.io import read_labels

    sp, _, _ = write_noisy_coco(read_labels(tiny["train"]), "single-positive", None, 0, tmp_path / "sp.json")

    def resolved(**kw):
        lines = []
        t = Trainer(cfg_for(tiny, tmp_path / "probe", **kw).validate(), log=lines.append)
        t._prepare_data()
        return t.cfg.loss, lines

    assert TrainConfig().loss == "auto"
    assert resolved()[0] == "bce"
    loss, lines = resolved(data=str(sp))
    assert loss == "an-ls" and any("--loss auto" in line and "positive-only" in line for line in lines)
    assert resolved(data=str(sp), mix="balancemix", balancemix_warmup=1)[0] == "bce"
    from labelfix.train.optim import resolve_auto   # from pretrained weights: plain AN

    sp_labels = np.asarray(read_labels(sp).labels)
    rows = np.arange(len(sp_labels))
    assert resolve_auto(TrainConfig(weights="w.pt"), sp_labels, rows).loss == "an"
    assert resolve_auto(TrainConfig(pretrained=True), sp_labels, rows).loss == "an"
    assert resolve_auto(TrainConfig(pretrained=True), np.asarray(read_labels(tiny["train"]).labels), rows).loss == "bce"
    loss, lines = resolved(data=str(sp), loss="bce")   # given: kept, with one line naming a class
    assert loss == "bce"
    names = read_labels(sp).class_names
    assert any("have no known negative" in line and repr(names[0]) in line for line in lines)
    assert not any("no known negative" in line for line in resolved(data=str(sp), loss="an")[1])
    with pytest.raises(LabelfixError, match="--loss-kwargs: .*pass --loss too"):
        cfg_for(tiny, tmp_path / "x", loss_kwargs={"epsilon": 0.2}).validate()

    out = tmp_path / "run"
    train(cfg_for(tiny, out, data=str(sp), epochs=1), log=quiet)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["loss"] == "an-ls"
    train(cfg_for(tiny, out, data=str(sp), epochs=2, resume=True), log=quiet)   # auto: the run's loss
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["loss"] == "an-ls"
    with pytest.raises(LabelfixError, match="--loss"):
        train(cfg_for(tiny, out, data=str(sp), epochs=3, loss="bce", resume=True), log=quiet)


def test_mix_auto_mixes_only_where_it_was_measured_to_help(tiny, tmp_path):
    """--mix auto (the default): LogicMix when fine-tuning pretrained weights on labels
    without unknown cells; no mixing from random weights, on frozen features, on partial or
    positive-only labels or with ROLE. One line names a pick, config.yaml records the
    resolved method, a resume continues with it, and a mixing option needs the method named."""
    from labelfix.data.noise import write_noisy_coco
    from labelfix.io import read_labels
    from labelfix.train.optim import resolve_auto, resolve_mix

    labels = np.asarray(read_labels(tiny["train"]).labels)
    sp, _, _ = write_noisy_coco(read_labels(tiny["train"]), "single-positive", None, 0, tmp_path / "sp.json")
    sp_labels = np.asarray(read_labels(sp).labels)
    rows = np.arange(len(labels))

    def mix(lab, rows=rows, **kw):
        lines = []
        cfg = resolve_mix(TrainConfig(**kw), lab, rows, lines.append)
        # a method picked is named in one line; none (the usual case) needs none
        assert lines == ([] if cfg.mix == "none" else [f"mixing: {cfg.mix} (--mix auto: fine-tuning pretrained "
                                                      f"weights on labels without unknown cells)"])
        return cfg.mix

    assert TrainConfig().mix == "auto"
    assert mix(labels, weights="w.pt") == mix(labels, pretrained=True) == "logicmix"
    assert (labels != -1).all()
    missing = labels.copy()
    missing[5, 1] = -1   # one unknown cell: partial labels
    assert mix(missing, weights="w.pt") == "none"
    assert mix(missing, weights="w.pt", rows=np.delete(rows, 5)) == "logicmix"   # only training rows count
    assert mix(labels) == "none"                                   # random weights
    assert mix(labels, weights="w.pt", frozen=True) == "none"      # frozen features
    assert mix(sp_labels, weights="w.pt") == "none"                # positive-only labels
    assert mix(labels, weights="w.pt", loss="role") == "none"      # ROLE cannot be mixed
    given = TrainConfig(weights="w.pt", mix="balancemix")
    assert resolve_mix(given, labels, rows) is given                # a named method is kept
    # BalanceMix is never auto's pick, so --loss auto's rule sees the resolved method
    assert resolve_auto(TrainConfig(weights="w.pt"), sp_labels, rows).mix == "none"
    with pytest.raises(LabelfixError, match="--mix-prob: options of which method.*pass --mix too"):
        cfg_for(tiny, tmp_path / "x", mix="auto", mix_prob=0.3).validate()

    out = tmp_path / "run"
    train(cfg_for(tiny, out, mix="auto", epochs=1), log=quiet)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["mix"] == "none"
    train(cfg_for(tiny, out, mix="auto", epochs=2, resume=True), log=quiet)   # auto: the run's method
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["mix"] == "none"
    with pytest.raises(LabelfixError, match="--mix"):
        train(cfg_for(tiny, out, mix="logicmix", epochs=3, resume=True), log=quiet)


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tiny, tmp_path, monkeypatch):
    original = Trainer._compute_loss

    def poisoned(self, *args):
        loss, b = original(self, *args)
        return (loss * float("nan") if self.epoch == 1 else loss), b

    monkeypatch.setattr(Trainer, "_compute_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(LabelfixError, match=r"epoch 2 step 1: the loss is nan.*epoch 1"):
        train(cfg_for(tiny, out), log=quiet)
    assert _weights(out / "checkpoints" / "last.pt")["epoch"] == 1


def test_ctrl_c_stops_with_resume_hint(tiny, tmp_path):
    from labelfix.train import TrainingInterrupted

    class CtrlC:
        def on_step(self, trainer, epoch, step):
            if epoch == 1:
                raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match=r"epoch 2; checkpoints/last.pt holds epoch 1.*--resume"):
        train(cfg_for(tiny, out), callbacks=[CtrlC()], log=quiet)
    assert _weights(out / "checkpoints" / "last.pt")["epoch"] == 1


def test_ctrl_c_in_the_evaluation_pass_names_it(tiny, tmp_path, monkeypatch):
    """Ctrl-C in the pass that follows a saved epoch names that pass and that epoch
    (before: "during epoch 3" when epoch 2's pass was interrupted)."""
    from labelfix.train import TrainingInterrupted, evaluate

    real = evaluate.finalize_epoch

    def finalize(t, epoch, info, record_mean):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(t, epoch, info, record_mean)

    monkeypatch.setattr(evaluate, "finalize_epoch", finalize)
    with pytest.raises(TrainingInterrupted, match=r"interrupted in the evaluation pass after epoch 2 \(--resume runs "
                                                   r"it again\); checkpoints/last.pt holds epoch 2"):
        train(cfg_for(tiny, tmp_path / "run"), log=quiet)


def test_ctrl_c_while_saving_names_the_checkpoint_on_disk(tiny, tmp_path, monkeypatch):
    """Ctrl-C while epoch 2's checkpoint is written: last.pt still holds epoch 1 (atomic
    write), and the message says so (before: "holds epoch 2")."""
    from labelfix.train import TrainingInterrupted
    from labelfix.train import checkpoint as ckpt_mod

    real, calls = ckpt_mod.save_checkpoint, []

    def save(t):
        calls.append(t.epoch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(t)

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", save)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match=r"during epoch 2; checkpoints/last.pt holds epoch 1"):
        train(cfg_for(tiny, out), log=quiet)
    assert _weights(out / "checkpoints" / "last.pt")["epoch"] == 1


def test_undecodable_images_are_skipped_and_listed(tiny, tmp_path, monkeypatch):
    import shutil

    from labelfix.data import image as image_mod

    looked_up, real_problem = [], image_mod.image_problem

    def problem(path, root):
        looked_up.append(str(path))
        return real_problem(path, root)

    monkeypatch.setattr(image_mod, "image_problem", problem)

    data = tmp_path / "data"
    shutil.copytree(Path(tiny["images"]), data / "images")
    coco = json.loads(Path(tiny["train"]).read_text())
    (data / "train.json").write_text(json.dumps(coco))
    bad, gone = coco["images"][3]["file_name"], coco["images"][5]["file_name"]
    (data / bad).write_bytes(b"not an image")
    (data / gone).unlink()
    lines = []
    res = train(cfg_for(tiny, tmp_path / "run", data=str(data / "train.json"), epochs=1), log=lines.append)
    assert res["skipped"] == 2
    skipped = pd.read_csv(tmp_path / "run" / "skipped_images.csv")
    # each file is listed with why it could not be read: a missing file is not "failed to decode"
    assert skipped["file_name"].tolist() == [bad, gone]
    assert skipped["reason"].tolist() == ["failed to decode", "missing"]
    logits = np.load(tmp_path / "run" / "stats" / "logits.npy")
    assert np.isnan(logits[[3, 5]]).all() and np.isfinite(np.delete(logits, [3, 5], axis=0)).all()
    assert any("2 image(s) could not be read and were skipped (1 failed to decode, 1 missing)" in line
               for line in lines)
    # said right after the epoch that found them, not only when training ends
    early = [i for i, line in enumerate(lines) if line.startswith("epoch 1: 2 image(s) could not be read")]
    assert early and early[0] < len(lines) - 1, lines
    # why a file could not be read is looked up once per file (the epoch's line, the csv, the summary)
    assert sorted(looked_up) == sorted(str(data / f) for f in (bad, gone))


# --------------------------------------------------------------------------- pure parts
def test_sampler_shards_one_global_permutation():
    idx = np.arange(100, 150)
    one = EpochBatchSampler(idx, 8, seed=3)
    ranks = [EpochBatchSampler(idx, 4, seed=3, world_size=2, rank=r) for r in range(2)]
    for s in (one, *ranks):
        s.set_epoch(2)
    assert len(one) == len(ranks[0]) == 50 // 8
    for b1, b0, b_1 in zip(one, *ranks):
        assert b1 == b0 + b_1     # same keys (index and augmentation seed), split by rank
    e2 = [k.index for b in one for k in b]
    one.set_epoch(3)
    assert e2 != [k.index for b in one for k in b]
    assert len(set(e2)) == len(e2)


def test_minority_sampler_state_round_trip():
    idx = np.arange(20)
    w = np.zeros(20)
    w[[2, 5]] = [1.0, 3.0]
    s = EpochBatchSampler(idx, 4, seed=0, minority=True)
    s.set_minority_weights(w)
    s.set_epoch(4)
    batches = list(s)
    assert all(len(b) == 8 and [k.slot for k in b] == [0] * 4 + [1] * 4 for b in batches)
    drawn = [k.index for b in batches for k in b[4:]]
    assert set(drawn) <= {2, 5}
    t = EpochBatchSampler(idx, 4, seed=0, minority=True)
    t.load_state_dict(s.state_dict())
    assert list(t) == batches


def test_shard_sampler_covers_every_index_once():
    rows = np.arange(11)
    seen = []
    for r in range(2):
        s = ShardSampler(rows, 4, world_size=2, rank=r)
        for step, batch in enumerate(s):
            seen += [k.index for k in batch[: s.valid_count(step)[r]]]
    assert sorted(seen) == list(range(11))


def test_lr_schedule_values():
    assert lr_factor(0, 10, 2, "cosine", 0.1, 0.0) == pytest.approx(0.1)
    assert lr_factor(1, 10, 2, "cosine", 0.1, 0.0) == pytest.approx(0.55)
    assert lr_factor(2, 10, 2, "cosine", 0.1, 0.0) == pytest.approx(1.0)
    assert lr_factor(9, 10, 2, "cosine", 0.1, 0.0) == pytest.approx(0.0, abs=1e-12)
    mid = 2 + 7 / 2
    assert lr_factor(mid, 10, 2, "cosine", 0.1, 0.0) == pytest.approx(0.5)
    assert lr_factor(9, 10, 2, "onecycle", 0.1, 0.05) == pytest.approx(0.05)
    assert lr_factor(5, 10, 2, "constant") == 1.0


def test_amp_defaults_off_on_cpu_and_bf16_when_asked():
    cpu = torch.device("cpu")
    assert build_amp(None, cpu) == (None, None)
    assert build_amp(False, cpu) == (None, None)
    assert build_amp(True, cpu) == (torch.bfloat16, None)   # no GradScaler outside fp16


def test_optimizer_step_clips_steps_schedules_and_counts():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    before = [p.detach().clone() for p in model.parameters()]
    (model(torch.full((2, 3), 100.0)).sum() * 100).backward()
    assert optimizer_step(opt, sched, None, 1.0, None, model, 7) == 8
    moved = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert moved.norm().item() == pytest.approx(1.0, rel=1e-5)       # lr 1 x clipped norm 1
    assert all(p.grad is None for p in model.parameters())
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_map_on_known_cells_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 2, size=(40, 3)).astype(np.int8)
    labels[:, 2] = -1
    labels[0, 2], labels[1, 2] = 1, 1          # class 2: positives only -> no AP
    scores = rng.normal(size=(40, 3))
    ap = per_class_ap(scores, labels)
    for k in range(2):
        m = labels[:, k] >= 0
        assert ap[k] == pytest.approx(average_precision_score(labels[m, k], scores[m, k]))
    assert math.isnan(ap[2])
    rep = map_report(scores, labels, np.array([0, 2, 1]))
    assert rep["map"] == pytest.approx(100 * ap[:2].mean())
    assert rep["map_many"] == pytest.approx(100 * ap[0]) and rep["map_few"] == pytest.approx(100 * ap[1])
    assert math.isnan(rep["map_medium"])


def test_class_groups_scaled_and_tertile():
    # 117,266 images -> COCO's own cuts: > 10,000 many, 1,000-10,000 medium, < 1,000 few
    g = class_groups(np.array([20000, 10000, 1000, 999]), 117_266, "scaled")
    assert g.tolist() == [0, 1, 1, 2]
    g = class_groups(np.array([200, 100, 10, 9]), 1172.66, "scaled")
    assert g.tolist() == [0, 1, 1, 2]
    assert class_groups(np.array([5, 50, 1, 20, 3, 9]), 100, "tertile").tolist() == [1, 0, 2, 0, 2, 1]


def test_resume_refuses_a_checkpoint_of_another_run(tiny, tmp_path):
    """A checkpoint copied in from another run (other data, split or seed) is refused
    with a message that says why, and nothing in the run is changed; an empty one (a copy
    that broke off) is one line too."""
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    train(cfg_for(tiny, a, epochs=1, seed=0), log=quiet)
    train(cfg_for(tiny, b, epochs=1, seed=1), log=quiet)
    shutil.copy(a / "checkpoints" / "last.pt", b / "checkpoints" / "last.pt")
    before = (b / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(LabelfixError, match="belongs to other data, split or seed"):
        train(cfg_for(tiny, b, epochs=2, seed=1, resume=True), log=quiet)
    assert (b / "checkpoints" / "last.pt").read_bytes() == before
    (b / "checkpoints" / "last.pt").write_bytes(b"")   # a copy that broke off (an IndexError before)
    with pytest.raises(LabelfixError, match=r"last.pt: cannot read the checkpoint: the file is empty$"):
        train(cfg_for(tiny, b, epochs=2, seed=1, resume=True), log=quiet)


@pytest.mark.parametrize("asked", [None, True, False])
def test_channels_last_on_the_cpu_only_when_asked(tiny, tmp_path, asked):
    """--channels-last is honoured on the CPU (off by default there, docs/training.md),
    and a channels_last run trains to finite statistics."""
    cfg = cfg_for(tiny, tmp_path / "run", channels_last=asked, device="cpu").validate()
    t = Trainer(cfg, log=quiet)
    t.fit()
    conv = next(m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == bool(asked)
    assert np.isfinite(np.load(tmp_path / "run" / "stats" / "logits.npy").astype(np.float32)).all()


def test_head_starts_at_the_class_priors_unless_asked_or_loaded(tiny, tmp_path):
    """With --prior-bias (the default, except with ROLE / EPR) the head's output bias starts at
    logit(each class's positive share in the training rows); with --no-prior-bias the head
    keeps its own init; a head loaded from a --weights file is not overwritten."""
    from labelfix.models.prior import class_prior

    def built(**kw):
        t = Trainer(cfg_for(tiny, tmp_path / "run", **{"prior_bias": True, **kw}).validate(), log=quiet)
        t._prepare_data()
        t._build()
        return t

    t = built()
    labels = np.asarray(t.labels)
    expected = class_prior(labels, t.train_rows, unknown_as_negative=False)
    assert np.allclose(torch.sigmoid(t.model.head.output_bias).detach().numpy(), expected, atol=1e-6)
    assert expected.std() > 0.05   # the classes' frequencies differ: a constant bias would not pass
    # with unknown cells, a loss that trains them as negatives counts them as negatives
    from labelfix.data.noise import write_noisy_coco
    from labelfix.io import read_labels

    partial, _, _ = write_noisy_coco(read_labels(tiny["train"]), "missing", 0.5, 0, tmp_path / "partial.json")
    for loss, as_negative in (("bce", False), ("an", True)):
        p = built(data=str(partial), loss=loss)
        assert (np.asarray(p.labels) == -1).any()
        prior = class_prior(np.asarray(p.labels), p.train_rows, unknown_as_negative=as_negative)
        assert np.allclose(torch.sigmoid(p.model.head.output_bias).detach().numpy(), prior, atol=1e-6)
    assert not np.allclose(prior, class_prior(np.asarray(p.labels), p.train_rows, unknown_as_negative=False))
    default = built(prior_bias=None)   # not given: on
    assert torch.equal(default.model.head.output_bias, t.model.head.output_bias)
    plain = built(prior_bias=False)
    assert not np.allclose(torch.sigmoid(plain.model.head.output_bias).detach().numpy(), expected, atol=1e-3)
    for loss in ("role", "epr"):   # their expected-positive count sets the scale: refused, and off by default
        with pytest.raises(LabelfixError, match=f"--prior-bias: not with --loss {loss}"):
            cfg_for(tiny, tmp_path / "run", loss=loss, prior_bias=True).validate()
        assert not cfg_for(tiny, tmp_path / "run", loss=loss).validate().uses_prior_bias
    torch.save(plain.model.state_dict(), tmp_path / "full.pt")
    loaded = built(weights=str(tmp_path / "full.pt"))
    assert torch.equal(loaded.model.head.output_bias, plain.model.head.output_bias)


def test_validation_images_shared_with_training_are_noted(tiny, tmp_path):
    """--val naming the training images: training runs and a note says the validation mAP
    is not held out (before: silent); a separate test split gets no note."""
    lines = []
    train(cfg_for(tiny, tmp_path / "same", epochs=1, val=str(tiny["train"])), log=lines.append)
    assert any("note: 32 of 32 --val images are also training images" in line for line in lines)
    lines = []
    train(cfg_for(tiny, tmp_path / "apart", epochs=1, val=str(tiny["test"])), log=lines.append)
    assert not any("--val images are also training images" in line for line in lines)


def test_a_warm_up_longer_than_the_run_is_said(tiny, tmp_path):
    # the peak --lr is never reached: a note, once (the run trains as asked)
    lines = []
    train(cfg_for(tiny, tmp_path / "long", epochs=1, warmup_epochs=3), log=lines.append)
    said = [line for line in lines if "--warmup-epochs 3 is longer than --epochs 1" in line]
    assert len(said) == 1 and said[0].startswith("note: ") and "never reaches --lr 0.001" in said[0]
    lines = []
    train(cfg_for(tiny, tmp_path / "short", epochs=1, warmup_epochs=1), log=lines.append)
    assert not any("--warmup-epochs" in line for line in lines)
