"""Fixtures of the data tests (helpers live in helpers.py)."""

from pathlib import Path

import pytest

from tests.data.helpers import shakespeare_path


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    return shakespeare_path()
