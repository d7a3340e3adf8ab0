"""Where the model looked, without a feature-map output: an occlusion-sensitivity map.

Each square patch of the model's input is covered in turn with a neutral value and the
image is scored again; the drop of the abnormal logit is how much the model relied on
that patch (Zeiler & Fergus, ECCV 2014). It needs nothing but the model's ``logits``
output, so it works for any model the node runs, at the cost of one batched run of
``(input_size / patch) ** 2`` images. The node uses it only for models whose card
declares no class-activation-map output (:mod:`models.cam_output`), which comes free
with the logits.

Pure numpy around a ``predict_logits`` function; no torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["PATCHES_PER_SIDE", "occlusion_map"]

#: The map is PATCHES_PER_SIDE x PATCHES_PER_SIDE cells over the model's input.
PATCHES_PER_SIDE = 8


def occlusion_map(
    predict_logits: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    *,
    patches_per_side: int = PATCHES_PER_SIDE,
    base_logit: float | None = None,
) -> np.ndarray:
    """Occlusion sensitivity of the abnormal logit over a grid of patches.

    Parameters
    ----------
    predict_logits : callable
        ``(N, C, H, W) float32 -> (N,)`` or ``(N, 1)`` abnormal logits
        (``Classifier.predict_logits``).
    image : numpy.ndarray
        One preprocessed input, ``(C, H, W)``.
    patches_per_side : int
        Grid size; each patch is ``H / patches_per_side`` pixels (the last row and
        column take the remainder).
    base_logit : float, optional
        The logit of the unoccluded image (computed when not given).

    Returns
    -------
    numpy.ndarray
        ``(patches_per_side, patches_per_side)`` float32 in [0, 1]: the logit drop
        of each patch divided by the largest drop; all zeros when no patch lowers
        the logit.

    Raises
    ------
    ValueError
        When ``image`` is not 3-D or smaller than the grid.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    _c, height, width = image.shape
    n = int(patches_per_side)
    if n < 1 or height < n or width < n:
        raise ValueError(f"a {height}x{width} input cannot hold a {n}x{n} grid")
    fill = float(image.mean())
    rows = np.linspace(0, height, n + 1).round().astype(int)
    cols = np.linspace(0, width, n + 1).round().astype(int)
    batch = np.repeat(image[None].astype(np.float32, copy=False), n * n, axis=0)
    for i in range(n):
        for j in range(n):
            batch[i * n + j, :, rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = fill
    occluded = np.asarray(predict_logits(batch), dtype=np.float32).reshape(-1)
    if base_logit is None:
        base_logit = float(
            np.asarray(predict_logits(image[None].astype(np.float32)), dtype=np.float32).ravel()[0]
        )
    drop = np.clip(base_logit - occluded, 0.0, None).reshape(n, n)
    top = float(drop.max())
    return (drop / top).astype(np.float32) if top > 0 else np.zeros((n, n), np.float32)
