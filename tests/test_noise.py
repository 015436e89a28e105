"""Noise protocols produce the stated rates (within sampling error) on a large matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from labelfix.cli import main
from labelfix.data.noise import inject_noise
from labelfix.io import read_labels
from labelfix.labels import NEG, POS, UNK


@pytest.fixture(scope="module")
def big():
    rng = np.random.default_rng(1)
    n, k = 20000, 12
    p = np.linspace(0.02, 0.4, k)  # imbalanced classes
    return (rng.random((n, k)) < p).astype(np.int8)


def sigma(p, n):
    return np.sqrt(p * (1 - p) / n)


def test_flip_rate(big):
    rate = 0.2
    out = inject_noise(big, "flip", rate, seed=3).labels
    changed = (out != big).mean()
    assert abs(changed - rate) < 5 * sigma(rate, big.size)
    assert set(np.unique(out)) <= {0, 1}


def test_missing_rate(big):
    lab = big.copy()
    lab[:100] = UNK  # unknown cells stay unknown and are not counted
    out = inject_noise(lab, "missing", 0.5, seed=4).labels
    known = lab != UNK
    frac = (out[known] == UNK).mean()
    assert abs(frac - 0.5) < 5 * sigma(0.5, known.sum())
    np.testing.assert_array_equal(out[~known], UNK)
    np.testing.assert_array_equal(out[known & (out != UNK)], lab[known & (out != UNK)])


def test_single_positive(big):
    out = inject_noise(big, "single-positive", seed=5).labels
    has = (big == POS).any(1)
    assert ((out == POS).sum(1) == has.astype(int)).all()
    assert (big[out == POS] == POS).all()
    assert ((out == UNK) | (out == POS)).all()


def test_mislabel_class_dependent(big):
    rate = 0.4
    res = inject_noise(big, "mislabel", rate, seed=6)
    n_k = (big == POS).sum(0).astype(float)
    total = n_k.sum()
    moves = np.array([(i, j) for (_, i), j in res.moves.items()])
    n_pos = int(n_k.sum())
    # each positive moved with total probability `rate`
    assert abs(len(moves) / n_pos - rate) < 5 * sigma(rate, n_pos)
    # a positive of class i lands on class j with probability rate * N_j / (N - N_i)
    for i in range(big.shape[1]):
        src = moves[moves[:, 0] == i, 1]
        for j in range(big.shape[1]):
            if i == j:
                assert (src != i).all()
                continue
            p = rate * n_k[j] / (total - n_k[i])
            observed = (src == j).sum() / n_k[i]
            assert abs(observed - p) < 5 * sigma(p, n_k[i]) + 1e-3
    # moved cells are negative at the source unless another move brought them back
    for (r, i), j in list(res.moves.items())[:500]:
        assert res.labels[r, j] == POS


def test_seeded_and_input_untouched(big):
    before = big.copy()
    a = inject_noise(big, "flip", 0.1, seed=7).labels
    b = inject_noise(big, "flip", 0.1, seed=7).labels
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(big, before)
    assert not np.array_equal(a, inject_noise(big, "flip", 0.1, seed=8).labels)


@pytest.mark.parametrize("kind,rate", [("mislabel", "0.4"), ("flip", "0.2"), ("single-positive", None), ("missing", "0.5")])
def test_noise_cli_reads_back(demo_data, tmp_path, kind, rate):
    out = tmp_path / "noisy.json"
    before = demo_data["train"].read_bytes()
    args = ["noise", str(demo_data["train"]), "--kind", kind, "--seed", "1", "--out", str(out)]
    if rate:
        args += ["--rate", rate]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert demo_data["train"].read_bytes() == before  # input never modified
    clean = read_labels(demo_data["train"])
    noisy = read_labels(out)
    assert noisy.image_path(0) == clean.image_path(0)  # image root recorded in the file
    changes = __import__("pandas").read_csv(out.with_name("noisy.changes.csv"), dtype=str)
    diff = np.argwhere(clean.labels != noisy.labels)
    assert len(changes) == len(diff) > 0
    names = {"1": POS, "0": NEG, "unknown": UNK}
    for row, (r, k) in zip(changes.itertuples(), diff):
        assert names[row.true] == clean.labels[r, k] and names[row.noisy] == noisy.labels[r, k]
    if kind == "mislabel":
        # moved annotations keep their boxes
        data = json.loads(out.read_text())
        assert all("bbox" in a for a in data["annotations"])


def test_change_log_name_drops_the_json_extension_in_any_case(tmp_path):
    from labelfix.io.outputs import change_log_for

    # the CLI accepts .JSON; its log was UP.JSON.changes.csv instead of the documented <out stem>.changes.csv
    assert change_log_for(tmp_path / "UP.JSON") == tmp_path / "UP.changes.csv"
    assert change_log_for(tmp_path / "noisy.json") == tmp_path / "noisy.changes.csv"
    assert change_log_for(tmp_path / "labels.csv") == tmp_path / "labels.csv.changes.csv"


def test_noise_from_a_csv_writes_coco_with_the_images_sizes(demo_data, tmp_path):
    """COCO requires width / height; a CSV has none, so they come from the image files'
    headers (they were written as 0), and stay 0 for a file that is not there."""
    clean = read_labels(demo_data["train"])
    names = clean.images["file_name"].tolist()[:6]
    rows = ["file_name,one,two"] + [f"{n},1,0" for n in names] + ["images/not_there.png,0,1"]
    src = demo_data["train"].parent / "sizes.csv"
    src.write_text("\n".join(rows) + "\n")
    out = tmp_path / "noisy.json"
    res = CliRunner().invoke(main, ["noise", str(src), "--kind", "flip", "--rate", "0.2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in json.loads(out.read_text())["images"]}
    assert sizes == {**{n: (48, 48) for n in names}, "images/not_there.png": (0, 0)}
