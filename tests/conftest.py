"""Shared fixtures. Tests run on the CPU with tiny models and images."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Any FiftyOne use in the tests (and their subprocesses) gets a throw-away database,
# never the user's ~/.fiftyone.
os.environ["FIFTYONE_DATABASE_DIR"] = tempfile.mkdtemp(prefix="labelfix-test-fodb-")
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict:
    """A small demo dataset (digit mosaics, COCO) shared by the whole session."""
    from labelfix.data.demo import make_demo

    out = tmp_path_factory.mktemp("demo")
    return make_demo(out, n_train=160, n_test=80, size=48, seed=0)


@pytest.fixture
def torch_one_thread():
    """Tiny models run fastest single-threaded on a 2-core machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
