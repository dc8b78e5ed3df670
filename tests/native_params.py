"""The builds of the native kernels this machine executes, as pytest parameters (shared by conftest and tests)."""

from __future__ import annotations

import pytest


def _native_params() -> list:
    """Every build of the native kernels this CPU executes (plain AVX2 too where the CPU also has AVX-VNNI, whose
    avx2 build would otherwise never run the vpmaddubsw path), the best first and the others marked slow; none
    under FORWARDPASS_CPU=torch."""
    from forwardpass.kernels import native, select

    if select.resolve_cpu() == "torch":
        return [
            pytest.param(None, marks=pytest.mark.skip(reason="native kernels switched off (FORWARDPASS_CPU=torch)"))
        ]
    params = []
    for variant in native.runnable_variants():
        if variant == "avx2" and "avx_vnni" in native.cpu_features():
            params.append(pytest.param(("avx2", True), id="avx2+vnni"))
            params.append(pytest.param(("avx2", False), id="avx2"))
        else:
            params.append(pytest.param((variant, None), id=variant))
    # the working loop (-m "not slow") runs the best build only; the full suite every build
    params[1:] = [pytest.param(*p.values, id=p.id, marks=pytest.mark.slow) for p in params[1:]]
    return params or [pytest.param(None, marks=pytest.mark.skip(reason="no native kernel variant for this CPU"))]


NATIVE_PARAMS = _native_params()
