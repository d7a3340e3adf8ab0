"""The occlusion map finds the region a model relies on, with nothing but its logits."""

from __future__ import annotations

import numpy as np
import pytest

from models.occlusion import occlusion_map


def _model_that_looks_at(rows: slice, cols: slice):
    def predict_logits(batch: np.ndarray) -> np.ndarray:
        return batch[:, 0, rows, cols].mean(axis=(1, 2))

    return predict_logits


def test_the_map_peaks_where_the_model_looks() -> None:
    image = np.zeros((1, 64, 64), np.float32)
    image[0, 40:48, 8:16] = 5.0  # a bright "finding" in grid cell (5, 1)
    heatmap = occlusion_map(_model_that_looks_at(slice(40, 48), slice(8, 16)), image)
    assert heatmap.shape == (8, 8) and heatmap.dtype == np.float32
    assert np.unravel_index(int(heatmap.argmax()), heatmap.shape) == (5, 1)
    assert heatmap.max() == pytest.approx(1.0)
    assert heatmap.sum() == pytest.approx(1.0)  # no other cell matters to this model


def test_a_model_that_ignores_the_image_gives_an_empty_map() -> None:
    image = np.random.default_rng(0).normal(size=(1, 32, 32)).astype(np.float32)
    heatmap = occlusion_map(lambda b: np.zeros(len(b), np.float32), image, patches_per_side=4)
    assert heatmap.shape == (4, 4) and not heatmap.any()


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="C, H, W"):
        occlusion_map(lambda b: b, np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="grid"):
        occlusion_map(lambda b: b, np.zeros((1, 4, 4), np.float32), patches_per_side=8)
