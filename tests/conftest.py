"""Fixtures shared by the test modules."""
import pytest

from replay_overshooting.backends import BACKEND_VARIABLE
from replay_overshooting.native import native_loops


@pytest.fixture(params=["native", "fused", "reference"])
def backend(request, monkeypatch):
    """Run a test once with each implementation of `00b_backends`: the C++ loops, the fused Python nodes and the
    plain reference path, by making it the default backend of every call that does not name one. The C++ run is
    skipped where the extension is not built; on a machine with a compiler `test_native.py` fails if it does not
    build."""
    if request.param == "native" and native_loops() is None:
        pytest.skip("the C++ extension is not built here")
    monkeypatch.setenv(BACKEND_VARIABLE, request.param)
    return request.param
