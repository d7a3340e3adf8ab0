"""Probes on frozen embeddings, and their conversion to torch heads for the ONNX graph.

Six families, as in the MedImageInsight reference work: logistic regression,
SVM, k-NN, random forest, MLP and LightGBM. Each is tuned by grid search with
5-fold cross-validation grouped by patient (:class:`StratifiedGroupKFold`,
ROC-AUC). The best is turned into a :class:`torch.nn.Module` head mapping
``(N, D)`` embeddings to ``(N,)`` abnormal logits, so it is exported inside the
same ONNX graph as the encoder (one graph, the worker's contract unchanged).

Logits per family: the decision function (logistic regression, SVM, MLP's last
pre-activation, LightGBM's raw score), or ``log(p / (1 - p))`` of the
predicted probability clipped to ``[1e-4, 1 - 1e-4]`` (k-NN, random forest).
:func:`estimator_logits` gives the same quantity from scikit-learn for the
parity check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "PROBE_FAMILIES",
    "KnnHead",
    "LinearHead",
    "MlpHead",
    "ProbeResult",
    "RbfSvmHead",
    "TreeEnsembleHead",
    "estimator_logits",
    "fit_probes",
    "head_from_estimator",
]

logger = logging.getLogger(__name__)

_P_CLIP = 1e-4


def _proba_logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(_P_CLIP, 1 - _P_CLIP)
    return torch.log(p) - torch.log1p(-p)


def _grids(small: bool) -> dict[str, tuple[Any, dict[str, list[Any]]]]:
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    if small:
        return {
            "logistic_regression": (LogisticRegression(max_iter=2000), {"C": [0.1, 1.0]}),
            "svm": (SVC(), {"kernel": ["linear", "rbf"], "C": [1.0]}),
            "knn": (KNeighborsClassifier(), {"n_neighbors": [3, 5]}),
            "random_forest": (
                RandomForestClassifier(n_estimators=10, random_state=0),
                {"max_depth": [3, None]},
            ),
            "mlp": (
                MLPClassifier(max_iter=300, random_state=0),
                {"hidden_layer_sizes": [(16,)], "alpha": [1e-4]},
            ),
            "lightgbm": (
                LGBMClassifier(n_estimators=20, random_state=0, verbose=-1, min_child_samples=2),
                {"num_leaves": [4, 8]},
            ),
        }
    return {
        "logistic_regression": (
            LogisticRegression(max_iter=5000),
            {"C": [0.01, 0.1, 1.0, 10.0, 100.0]},
        ),
        "svm": (SVC(), {"kernel": ["linear", "rbf"], "C": [0.1, 1.0, 10.0]}),
        "knn": (KNeighborsClassifier(), {"n_neighbors": [5, 11, 21, 41]}),
        "random_forest": (
            RandomForestClassifier(n_estimators=300, random_state=0, n_jobs=-1),
            {"max_depth": [8, 16, None], "min_samples_leaf": [1, 5]},
        ),
        "mlp": (
            MLPClassifier(max_iter=500, early_stopping=True, random_state=0),
            {"hidden_layer_sizes": [(256,), (512, 128)], "alpha": [1e-4, 1e-2]},
        ),
        "lightgbm": (
            LGBMClassifier(n_estimators=400, learning_rate=0.05, random_state=0, verbose=-1),
            {"num_leaves": [15, 31], "min_child_samples": [10, 30]},
        ),
    }


#: Names of the probe families, in the order they are fitted.
PROBE_FAMILIES = ("logistic_regression", "svm", "knn", "random_forest", "mlp", "lightgbm")


@dataclass
class ProbeResult:
    """One tuned probe family."""

    family: str
    params: dict[str, Any]
    cv_roc_auc: float
    estimator: Any

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no estimator)."""
        return {"family": self.family, "params": self.params, "cv_roc_auc": self.cv_roc_auc}


def fit_probes(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    families: tuple[str, ...] = PROBE_FAMILIES,
    n_splits: int = 5,
    seed: int = 0,
    small_grid: bool = False,
    n_jobs: int | None = None,
) -> list[ProbeResult]:
    """Grid-search every family with patient-grouped stratified k-fold; best first.

    Parameters
    ----------
    x : numpy.ndarray
        ``(N, D)`` embeddings.
    y : numpy.ndarray
        ``(N,)`` labels 0/1.
    groups : numpy.ndarray
        ``(N,)`` patient ids: no patient is in a training and a validation fold at once.
    families : tuple of str
        Subset of :data:`PROBE_FAMILIES`.
    n_splits : int
    seed : int
    small_grid : bool
        Tiny grids (tests, smoke runs).
    n_jobs : int, optional
        Passed to :class:`~sklearn.model_selection.GridSearchCV`.

    Returns
    -------
    list of ProbeResult
        Sorted by cross-validated ROC-AUC, best first; each refitted on all of ``x``.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold

    grids = _grids(small_grid)
    unknown = set(families) - set(grids)
    if unknown:
        raise ValueError(f"unknown probe families {sorted(unknown)}; known: {PROBE_FAMILIES}")
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    results = []
    smallest_fold = len(x) - int(np.ceil(len(x) / n_splits))
    for family in families:
        est, grid = grids[family]
        if family == "knn":  # k cannot exceed a training fold
            ks = [k for k in grid["n_neighbors"] if k <= smallest_fold] or [1]
            grid = {**grid, "n_neighbors": ks}
        search = GridSearchCV(est, grid, scoring="roc_auc", cv=cv, refit=True, n_jobs=n_jobs)
        search.fit(x, y, groups=groups)
        results.append(
            ProbeResult(
                family, dict(search.best_params_), float(search.best_score_), search.best_estimator_
            )
        )
        logger.info(
            "probe %s: CV ROC-AUC %.4f with %s", family, search.best_score_, search.best_params_
        )
    return sorted(results, key=lambda r: -r.cv_roc_auc)


def estimator_logits(est: Any, x: np.ndarray) -> np.ndarray:
    """The abnormal logit of a fitted estimator, as its torch head computes it."""
    name = type(est).__name__
    if name in ("LogisticRegression", "SVC"):
        return np.asarray(est.decision_function(x), dtype=np.float64)
    if name == "LGBMClassifier":
        return np.asarray(est.predict(x, raw_score=True), dtype=np.float64)
    if name == "MLPClassifier":
        h = x
        for i, (w, b) in enumerate(zip(est.coefs_, est.intercepts_, strict=True)):
            h = h @ w + b
            if i < len(est.coefs_) - 1:
                h = np.maximum(h, 0)
        return h[:, 0].astype(np.float64)
    p = np.clip(est.predict_proba(x)[:, 1], _P_CLIP, 1 - _P_CLIP)
    return np.log(p) - np.log1p(-p)


# -- heads ----------------------------------------------------------------------------------


class LinearHead(nn.Module):
    """``x @ w + b`` (logistic regression, linear SVM)."""

    def __init__(self, coef: np.ndarray, intercept: float) -> None:
        super().__init__()
        self.register_buffer("w", torch.as_tensor(np.asarray(coef, np.float32).reshape(-1)))
        self.register_buffer("b", torch.tensor(float(intercept)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.to(x.dtype) + self.b.to(x.dtype)


class RbfSvmHead(nn.Module):
    """``sum_i a_i exp(-gamma |x - s_i|^2) + b``."""

    def __init__(self, support: np.ndarray, dual: np.ndarray, intercept: float, gamma: float):
        super().__init__()
        self.register_buffer("s", torch.as_tensor(np.asarray(support, np.float32)))
        self.register_buffer("a", torch.as_tensor(np.asarray(dual, np.float32).reshape(-1)))
        self.register_buffer("b", torch.tensor(float(intercept)))
        self.gamma = float(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.s.to(x.dtype)
        d2 = (x * x).sum(1, keepdim=True) - 2 * x @ s.t() + (s * s).sum(1)[None, :]
        return torch.exp(-self.gamma * d2.clamp_min(0)) @ self.a.to(x.dtype) + self.b.to(x.dtype)


class KnnHead(nn.Module):
    """Fraction of abnormal among the ``k`` nearest training embeddings (Euclidean), as a logit."""

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray, k: int) -> None:
        super().__init__()
        self.register_buffer("tx", torch.as_tensor(np.asarray(train_x, np.float32)))
        self.register_buffer("ty", torch.as_tensor(np.asarray(train_y, np.float32)))
        self.k = int(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tx = self.tx.to(x.dtype)
        d2 = (x * x).sum(1, keepdim=True) - 2 * x @ tx.t() + (tx * tx).sum(1)[None, :]
        _, idx = torch.topk(-d2, self.k, dim=1)
        p = self.ty.to(x.dtype)[idx].mean(1)
        return _proba_logit(p)


class MlpHead(nn.Module):
    """ReLU MLP with the sklearn weights; returns the output pre-activation."""

    def __init__(self, coefs: list[np.ndarray], intercepts: list[np.ndarray]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (w, b) in enumerate(zip(coefs, intercepts, strict=True)):
            lin = nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                lin.weight.copy_(torch.as_tensor(np.asarray(w, np.float32).T))
                lin.bias.copy_(torch.as_tensor(np.asarray(b, np.float32)))
            layers.append(lin)
            if i < len(coefs) - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


class TreeEnsembleHead(nn.Module):
    """Binary trees evaluated with gathers: ``x[feature] <= threshold`` goes left.

    Trees are padded to the same node count; leaves point to themselves, so
    ``depth`` steps reach every leaf. ``mode='mean_proba'`` (random forest)
    averages leaf probabilities and returns their logit; ``mode='sum'``
    (LightGBM) returns the sum of leaf values.
    """

    def __init__(
        self,
        feature: np.ndarray,
        threshold: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        value: np.ndarray,
        depth: int,
        mode: str,
    ) -> None:
        super().__init__()
        n_trees, n_nodes = feature.shape
        offset = (np.arange(n_trees) * n_nodes)[:, None]
        self.register_buffer("feature", torch.as_tensor(feature.reshape(-1), dtype=torch.int64))
        self.register_buffer(
            "threshold", torch.as_tensor(threshold.reshape(-1), dtype=torch.float32)
        )
        self.register_buffer(
            "left", torch.as_tensor((left + offset).reshape(-1), dtype=torch.int64)
        )
        self.register_buffer(
            "right", torch.as_tensor((right + offset).reshape(-1), dtype=torch.int64)
        )
        self.register_buffer("value", torch.as_tensor(value.reshape(-1), dtype=torch.float32))
        self.register_buffer("root", torch.as_tensor(offset[:, 0], dtype=torch.int64))
        self.depth, self.mode = int(depth), mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        node = self.root[None, :].expand(x.shape[0], -1)
        thr = self.threshold.to(x.dtype)
        for _ in range(self.depth):
            xv = torch.gather(x, 1, self.feature[node])
            node = torch.where(xv <= thr[node], self.left[node], self.right[node])
        leaf = self.value.to(x.dtype)[node]
        if self.mode == "sum":
            return leaf.sum(1)
        return _proba_logit(leaf.mean(1))


def _pad_trees(trees: list[dict[str, np.ndarray]], mode: str) -> TreeEnsembleHead:
    n = max(len(t["feature"]) for t in trees)
    arrays = {k: np.zeros((len(trees), n), np.float64) for k in ("feature", "threshold", "value")}
    left = np.zeros((len(trees), n), np.int64)
    right = np.zeros((len(trees), n), np.int64)
    depth = 0
    for i, t in enumerate(trees):
        m = len(t["feature"])
        for k, arr in arrays.items():
            arr[i, :m] = t[k]
        left[i, :m], right[i, :m] = t["left"], t["right"]
        left[i, m:] = right[i, m:] = np.arange(m, n)  # padding nodes: unreachable self-loops
        depth = max(depth, t["depth"])
    return TreeEnsembleHead(
        arrays["feature"].astype(np.int64),
        arrays["threshold"],
        left,
        right,
        arrays["value"],
        depth,
        mode,
    )


def _sklearn_tree(tree: Any) -> dict[str, np.ndarray]:
    t = tree.tree_
    idx = np.arange(t.node_count)
    leaf = t.children_left < 0
    value = t.value[:, 0, :]
    frac = value[:, 1] / np.maximum(value.sum(1), 1e-12)
    return {
        "feature": np.where(leaf, 0, t.feature),
        "threshold": np.where(leaf, 0.0, t.threshold),
        "left": np.where(leaf, idx, t.children_left),
        "right": np.where(leaf, idx, t.children_right),
        "value": frac,
        "depth": int(t.max_depth),
    }


def _lightgbm_tree(structure: dict[str, Any]) -> dict[str, np.ndarray]:
    feature: list[int] = []
    threshold: list[float] = []
    left: list[int] = []
    right: list[int] = []
    value: list[float] = []
    depth = 0

    def visit(node: dict[str, Any], level: int) -> int:
        nonlocal depth
        i = len(feature)
        feature.append(0)
        threshold.append(0.0)
        left.append(i)
        right.append(i)
        value.append(0.0)
        if "leaf_value" in node:
            value[i] = float(node["leaf_value"])
            depth = max(depth, level)
            return i
        if node.get("decision_type", "<=") != "<=":
            raise ValueError(f"LightGBM split {node.get('decision_type')!r} is not supported")
        feature[i] = int(node["split_feature"])
        threshold[i] = float(node["threshold"])
        left[i] = visit(node["left_child"], level + 1)
        right[i] = visit(node["right_child"], level + 1)
        return i

    visit(structure, 0)
    return {
        "feature": np.array(feature),
        "threshold": np.array(threshold),
        "left": np.array(left),
        "right": np.array(right),
        "value": np.array(value),
        "depth": depth,
    }


def head_from_estimator(est: Any, train_x: np.ndarray, train_y: np.ndarray) -> nn.Module:
    """A torch head computing :func:`estimator_logits` of a fitted estimator.

    ``train_x``/``train_y`` are needed by k-NN (the neighbours live in the graph).

    Raises
    ------
    ValueError
        For an estimator or configuration without a head.
    """
    name = type(est).__name__
    if name == "LogisticRegression":
        return LinearHead(est.coef_[0], est.intercept_[0])
    if name == "SVC":
        if est.kernel == "linear":
            return LinearHead(est.coef_[0], est.intercept_[0])
        if est.kernel == "rbf":
            return RbfSvmHead(
                est.support_vectors_, est.dual_coef_[0], est.intercept_[0], est._gamma
            )
        raise ValueError(f"SVC kernel {est.kernel!r} has no head")
    if name == "KNeighborsClassifier":
        if est.weights != "uniform" or est.effective_metric_ != "euclidean":
            raise ValueError("k-NN head needs weights='uniform' and the Euclidean metric")
        return KnnHead(train_x, train_y, est.n_neighbors)
    if name == "MLPClassifier":
        if est.activation != "relu":
            raise ValueError("MLP head needs activation='relu'")
        return MlpHead(est.coefs_, est.intercepts_)
    if name == "RandomForestClassifier":
        return _pad_trees([_sklearn_tree(t) for t in est.estimators_], "mean_proba")
    if name == "LGBMClassifier":
        dump = est.booster_.dump_model()
        trees = [_lightgbm_tree(t["tree_structure"]) for t in dump["tree_info"]]
        return _pad_trees(trees, "sum")
    raise ValueError(f"no torch head for {name}")
