"""Shared fixtures for the models tests: the public data under ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data not found at {path.resolve()} (expected <repo>/../shared/data)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Root of the shared data (skips when absent)."""
    return _need(DATA)


@pytest.fixture(scope="session")
def cxr_dir(data_dir: Path) -> Path:
    """Pediatric labelled CXR folder with labels.csv."""
    return _need(data_dir / "cxr" / "labels.csv").parent


@pytest.fixture(scope="session")
def nih_dir(data_dir: Path) -> Path:
    """Adult NIH 64 px thumbnails with demographics."""
    return _need(data_dir / "cxr-nih64" / "labels.csv").parent


@pytest.fixture(scope="session")
def dicom_dir(data_dir: Path) -> Path:
    """Real and torture DICOM files."""
    return _need(data_dir / "dicom" / "manifest.csv").parent
