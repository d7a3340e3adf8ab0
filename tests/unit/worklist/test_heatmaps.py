"""Heatmap files: safe paths, atomic writes, and the overlay the page shows."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worklist.heatmaps import heatmap_path, load_heatmap, overlay_png, save_heatmap


def test_paths_take_only_dicom_uids(tmp_path: Path) -> None:
    path = heatmap_path(tmp_path, "1.2.3", 2, "1.2.3.4")
    assert path == tmp_path / "heatmaps" / "1.2.3" / "r2" / "1.2.3.4.npy"
    with pytest.raises(ValueError):
        heatmap_path(tmp_path, "../../etc", 1, "1.2")


def test_save_load_and_overlay(tmp_path: Path) -> None:
    grid = np.zeros((8, 8), np.float32)
    grid[3:5, 3:5] = 1.0  # the centre
    path = save_heatmap(heatmap_path(tmp_path, "1.2", 1, "1.2.5"), grid)
    assert load_heatmap(path)[4, 4] == pytest.approx(1.0)
    assert load_heatmap(tmp_path / "missing.npy") is None
    thumb = io.BytesIO()
    Image.new("L", (160, 200), color=128).save(thumb, format="PNG")
    for keep_aspect in (False, True):
        out = Image.open(io.BytesIO(overlay_png(thumb.getvalue(), grid, keep_aspect=keep_aspect)))
        assert out.size == (160, 200) and out.mode == "RGB"
        pixels = np.asarray(out, dtype=int)
        red = pixels[..., 0] - pixels[..., 1]
        assert red[100, 80] > 100  # the centre is red
        assert red[5, 5] == 0 and red[195, 155] == 0  # corners untouched grey


def test_overlay_crops_the_padding_of_keep_aspect_inputs() -> None:
    grid = np.zeros((8, 8), np.float32)
    grid[:, 0] = 1.0  # the left edge of the model's input
    thumb = io.BytesIO()
    Image.new("L", (100, 200), color=128).save(thumb, format="PNG")

    def red_at_left_edge(keep_aspect: bool) -> int:
        out = overlay_png(thumb.getvalue(), grid, keep_aspect=keep_aspect)
        pixels = np.asarray(Image.open(io.BytesIO(out)), dtype=int)
        return int(pixels[100, 2, 0] - pixels[100, 2, 1])

    # Stretched: the input's left edge is the image's; padded: it is black padding
    # left of the image, which the overlay crops away.
    assert red_at_left_edge(False) > 100
    assert red_at_left_edge(True) == 0
