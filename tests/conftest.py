"""Fixtures of the whole suite (plain helpers are in ``tests/support.py``)."""

from __future__ import annotations

import os

import pytest

from tests.support import FAMILIES

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param
