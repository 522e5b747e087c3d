"""Shared fixtures: the real MSRC data in ../shared (read-only) and small synthetic trees."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; see wsss.cli.main

import pytest

REPO = Path(__file__).resolve().parents[1]
MSRC_ROOT = Path(os.environ.get("WSSS_MSRC_ROOT", REPO.parent / "shared" / "data" / "msrc21-voc"))


@pytest.fixture(scope="session")
def msrc_root() -> Path:
    """Path of the real MSRC-v2 VOC-layout folder (never written to)."""
    if not (MSRC_ROOT / "JPEGImages").is_dir():
        pytest.fail(f"MSRC data not found at {MSRC_ROOT}; set WSSS_MSRC_ROOT")
    return MSRC_ROOT
