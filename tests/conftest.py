"""Shared test fixtures. The small real datasets live in ../shared/data beside the repository (see tests/README.md)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the small real Visium samples and references (../shared/data)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} not found: the tests need the shared data folder beside the repository")
    return SHARED_DATA
