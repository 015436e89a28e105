"""Detection quality of `labelfix clean` on demo data with injected noise.

Each setting trains a small model on the noisy labels (CPU, a few epochs), runs clean and
compares the suggestions with the known truth. The floors were measured on these exact
settings (see MEASURED) and are set with a wide margin, never below what a constant rule
gets (flag every cell: precision = AP = the share of wrong cells).

Single-positive labels train with ROLE (the estimator table decides the suggested value of
unknown cells, the model's probability their score, docs/cleaning.md). Its suggestions'
precision is only a little above the constant rule on this budget (ROLE's table has had
8 updates per row), so its precision floor is the constant rule itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from labelfix.bench.metrics import detection_metrics, error_cells
from labelfix.cleaning.clean_run import clean_run
from labelfix.data.demo import make_demo
from labelfix.data.noise import write_noisy_coco
from labelfix.io import read_labels
from labelfix.run import load_run
from labelfix.train.config import TrainConfig
from labelfix.train.api import train

SETTINGS = {
    # kind, rate, training recipe
    "mislabel-0.4": ("mislabel", 0.4, dict(mix="balancemix", balancemix_warmup=3)),
    "flip-0.2": ("flip", 0.2, dict(mix="balancemix", balancemix_warmup=3)),
    "missing-0.5": ("missing", 0.5, dict(mix="logicmix")),
    "single-positive": ("single-positive", None, dict(loss="role", mix="none")),
}

# precision / recall of the suggestions and AP of the scores measured on these settings
# (seed 0); the asserted floors are FLOOR_FRACTION of these.
MEASURED = {
    "mislabel-0.4": dict(ap=0.301, precision=0.304, recall=0.272),  # share of wrong cells 0.126
    "flip-0.2": dict(ap=0.615, precision=0.350, recall=0.343),  # 0.208
    "missing-0.5": dict(ap=0.152, precision=0.277, recall=0.251),  # 0.111
    # precision: the floor is the constant rule's 0.109 (60 % of 0.126 would be below it)
    "single-positive": dict(ap=0.177, precision=0.126, recall=0.097),  # 0.109
}
FLOOR_FRACTION = 0.6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("quality"), n_train=320, n_test=40, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_detection_floors(data, tmp_path, setting):
    kind, rate, recipe = SETTINGS[setting]
    clean = read_labels(data["train"])
    noisy_path, _, _ = write_noisy_coco(clean, kind, rate, 0, tmp_path / "noisy.json")
    if recipe.get("loss") == "role":   # ROLE's expected positives per image, from the clean labels as in the bench
        recipe = {**recipe, "loss_kwargs": {"kappa": float((np.asarray(clean.labels) == 1).sum(1).mean())}}
    cfg = TrainConfig(data=str(noisy_path), out=str(tmp_path / "run"), backbone="test_resnet", img_size=48,
                      epochs=8, batch_size=32, lr=3e-3, warmup_epochs=1, hflip=0.0, workers=0, seed=0, device="cpu",
                      ema=False, progress=False, **recipe)
    train(cfg.validate(), log=lambda m: None)
    res = clean_run(tmp_path / "run", report=False)
    if kind == "single-positive":   # every given positive is trusted: no removal is suggested
        assert not (res.corrections["action"] == "remove").any()
    run = load_run(tmp_path / "run")
    given = np.asarray(run.labelset.labels)
    truth = np.asarray(clean.labels)
    m = detection_metrics(given, truth, np.asarray(run.cell("score")), np.asarray(run.cell("suggested")))
    prevalence = error_cells(given, truth).mean()
    print(f"\n{setting}: ap {m['ap']:.3f} precision {m['precision']:.3f} recall {m['recall']:.3f} "
          f"prevalence {prevalence:.3f} suggestions {len(res.corrections)}")
    constant = {"ap": prevalence, "precision": prevalence, "recall": 0.0}
    for key, measured in MEASURED[setting].items():
        floor = max(FLOOR_FRACTION * measured, constant[key])
        assert m[key] > floor, (key, m[key], floor)
