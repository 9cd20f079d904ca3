"""Shared pytest fixtures.

Real-data fixtures skip cleanly when ``../shared/data`` is absent (a user's fresh clone);
in CI the data is present and they run. Expensive things are session-scoped: the model is
loaded once, and each real slice is encoded at most once per test run (the engines below
cache embeddings; tests build ``Session`` objects on top of them).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))   # RadSAMBench, the development tools

DATA = Path(os.environ.get("RADSAM_DATA", ROOT.parent / "shared" / "data"))
ABDOMEN = DATA / "totalseg_example"
OPENKBP = DATA / "openkbp"
DICOM = DATA / "dcmqi_ct3slice"

ABDOMEN_ORGANS = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"}


def need(path: Path):
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set RADSAM_DATA or place ../shared/data)")
    return path


from RadSAMLib.metrics import dice  # noqa: E402  (re-exported for tests)


def wait_for(cond, timeout: float = 120.0) -> None:
    """Poll ``cond()`` until it is true (work in another thread); fail after ``timeout`` s."""
    import time
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def private_radsam_cache(tmp_path_factory):
    """``RADSAM_CACHE`` (exported graphs) in a folder of the module's own, for the module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RADSAM_CACHE", str(tmp_path_factory.mktemp("radsam_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def model():
    from RadSAMLib.models import load_model
    return load_model("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def abdomen():
    """(sitk image, (k,j,i) HU volume as stored (int16), (k,j,i) label array, {value: name})."""
    need(ABDOMEN)
    from RadSAMLib.imageio import image_to_array, read_image, read_label
    img = read_image(ABDOMEN / "ct.nii.gz")
    labels = {int(k): v for k, v in json.loads((ABDOMEN / "labels.json").read_text()).items()}
    return img, image_to_array(img), read_label(ABDOMEN / "seg.nii.gz", img), labels


@pytest.fixture(scope="session")
def abdomen_engine(model, abdomen):
    """SliceEngine over the abdominal CT (axis 0); every slice encoded once per run."""
    from RadSAMLib.engine import SliceEngine
    eng = SliceEngine(model, abdomen[1], axis=0)
    eng.encode_slices(range(eng.num_slices))
    return eng


@pytest.fixture(scope="session")
def default_model():
    """The model users get when they name none (RadSAMLib.DEFAULT_MODEL)."""
    from RadSAMLib.models import load_model
    return load_model(device="cpu")


@pytest.fixture(scope="session")
def default_engine(default_model, model, abdomen, abdomen_engine):
    """SliceEngine of the default model over the abdominal CT, sharing ``abdomen_engine``'s
    embeddings: the bundled fine-tune keeps the base image encoder (checked), so the
    slices are not encoded twice."""
    from RadSAMLib.engine import SliceEngine
    eng = SliceEngine(default_model, abdomen[1], axis=0)
    eng.share_embeddings(abdomen_engine)   # refused if the encoders' weights differ
    return eng
