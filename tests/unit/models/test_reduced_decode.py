"""The reduced-resolution decode (models.reduced_decode) against the full decode, on every
real file of the shared data: the same stored values at a lower resolution, the same
preview, and the shipped model's probability within 0.02."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from models.reduced_decode import decode_reduced, needed_side, reduction
from tests.unit.models.conftest import DATA
from triage.guarded_decode import decode_image

REAL = sorted((DATA / "dicom" / "real").glob("*.dcm"))
#: The files whose transfer syntax and size allow a reduced decode (the others are
#: decoded in full: native, RLE, JPEG-LS, a 16-bit JPEG 2000 Pillow cannot read).
REDUCIBLE = {
    "RG1_J2KI.dcm": (489, 461),  # 1841 at 1/4 is 461 (rounded up, as OpenJPEG does)
    "RG3_J2KI.dcm": (440, 440),
    "RG3_J2KR.dcm": (440, 440),
    "canon_DX_chest_966_fixed.dcm": (532, 500),
    "konica_CR_chest_Monochrome1-Jpeg.dcm": (612, 503),
}
TOLERANCE = 0.02
needs_data = pytest.mark.skipif(
    not REAL, reason=f"no real DICOM files under {DATA / 'dicom' / 'real'} (shared data absent)"
)


@pytest.fixture(scope="module")
def classifier():
    from models.runtime import Classifier

    return Classifier.load(None, ["CPUExecutionProvider"])


def test_reduction_keeps_the_shorter_side() -> None:
    assert reduction(1955, 1841, 256, 5) == 2  # 461 >= 256 > 231
    assert reduction(1955, 1841, 512, 5) == 1
    assert reduction(2446, 2010, 256, 3) == 2  # 503
    assert reduction(300, 300, 256, 5) == 0
    assert reduction(8192, 8192, 16, 3) == 3  # capped by the codec
    assert needed_side(128, 256) == 256
    assert needed_side(224, 256) == 448
    assert needed_side(None, 256) == 256


@needs_data
@pytest.mark.parametrize("name", sorted(REDUCIBLE))
def test_reduced_values_are_the_stored_values_at_a_lower_resolution(name: str) -> None:
    ds = pydicom.dcmread(DATA / "dicom" / "real" / name)
    small = decode_reduced(ds, min_side=256)
    assert small is not None, "no reduced decode of a file that allows one"
    assert small.shape == REDUCIBLE[name]
    full = ds.pixel_array.astype(np.float32)
    # The full image averaged to the same size: same scale, same picture.
    box = np.asarray(Image.fromarray(full, mode="F").resize(small.shape[::-1], Image.BOX))
    span = float(full.max() - full.min())
    assert abs(float(small.mean()) - float(box.mean())) < 0.01 * span
    assert np.corrcoef(small.ravel(), box.ravel())[0, 1] > 0.98


@needs_data
def test_files_that_allow_no_reduced_decode_give_none() -> None:
    for path in REAL:
        if path.name not in REDUCIBLE:
            assert decode_reduced(pydicom.dcmread(path), min_side=256) is None, path.name
    # a preview-only size larger than the image: nothing to reduce
    ds = pydicom.dcmread(DATA / "dicom" / "real" / "RG3_J2KI.dcm")
    assert decode_reduced(ds, min_side=1000) is None


@needs_data
@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_probability_and_preview_match_the_full_decode(path: Path, classifier) -> None:
    spec = classifier.card.preprocess_spec.to_dict()
    full = decode_image(str(path), spec, max_pixels=30_000_000, reduced=False)
    fast = decode_image(str(path), spec, max_pixels=30_000_000, reduced=True)
    assert fast.error == full.error
    assert (fast.png is None) == (full.png is None)
    if full.tensor is None:
        return
    assert fast.tensor is not None and fast.tensor.shape == full.tensor.shape
    p_full, p_fast = classifier.predict_proba(np.stack([full.tensor, fast.tensor]))
    assert abs(float(p_fast) - float(p_full)) <= TOLERANCE, (float(p_full), float(p_fast))
    if fast.png is not None and full.png is not None:
        import io

        a = np.asarray(Image.open(io.BytesIO(full.png)).convert("L"), dtype=np.float32)
        b = np.asarray(Image.open(io.BytesIO(fast.png)).convert("L"), dtype=np.float32)
        assert abs(a.shape[0] - b.shape[0]) <= 1 and abs(a.shape[1] - b.shape[1]) <= 1
        h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
        assert float(np.abs(a[:h, :w] - b[:h, :w]).mean()) < 8.0  # of 255
