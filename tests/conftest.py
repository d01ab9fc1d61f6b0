"""Fixtures shared by the test modules."""
import pytest

from replay_overshooting.native import native_loops, use_native_loops


@pytest.fixture(params=["native", "python"])
def backend(request):
    """Run a test once with the C++ recursions of `03a_native_loops` and once with the Python ones of `01_ekf` and
    `03_models`, so that both are always checked (the C++ run is skipped where the extension is not built; on a
    machine with a compiler `test_native.py` fails if it does not build)."""
    if request.param == "native" and native_loops() is None:
        pytest.skip("the C++ extension is not built here")
    previous = use_native_loops(request.param == "native")
    yield request.param
    use_native_loops(previous)
