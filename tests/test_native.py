"""The C++ loops build where a compiler is, and everything still runs (with a warning) where none is;
`hold_freed_memory` keeps push-size iterations off fresh pages (about 3,700 a step without it, here)."""
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap

import pytest

from replay_overshooting.backends import BACKEND_VARIABLE
from replay_overshooting.native import _source_directory, native_loops


def _run_python(code, **env):
    "Run `code` in a fresh interpreter with `env` added; returns the JSON it prints last."
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(os.environ.get(BACKEND_VARIABLE) in ("fused", "reference"),
                    reason="the C++ loops are switched off in the environment")
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler on this machine")
def test_builds_where_a_compiler_is():
    loops = native_loops()
    assert loops is not None
    assert {"filter_forward", "filter_backward", "rollout_forward", "rollout_backward"} <= set(dir(loops))


def test_compiles_for_avx2_only_where_aten_runs_it():
    """The whole extension is compiled with AVX2 and FMA only where ATen runs its own kernels so, into a build
    directory of its own: with ATen lowered to its baseline (`ATEN_CPU_CAPABILITY=default`) the flags go and the
    directory is another, so that a build for AVX2 is never loaded where it may not run."""
    code = """
        import json, platform, torch
        from replay_overshooting import native
        print(json.dumps({"flags": native._vector_flags(), "directory": native._build_directory().name,
                          "capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine()}))
    """
    baseline, here = _run_python(code, ATEN_CPU_CAPABILITY="default"), _run_python(code)
    assert baseline["capability"] == "DEFAULT" and baseline["flags"] == []
    assert not baseline["directory"].endswith("_avx2")
    if here["machine"].lower() in ("x86_64", "amd64") and here["capability"] in ("AVX2", "AVX512"):
        assert here["flags"] == ["-mavx2", "-mfma"] and here["directory"] == baseline["directory"] + "_avx2"
    else:
        assert here == {**baseline, "capability": here["capability"], "machine": here["machine"]}


def test_falls_back_with_a_warning_without_a_compiler(tmp_path):
    report = _run_python("""
        import json, os, time, warnings
        import torch
        from replay_overshooting import native
        from replay_overshooting.models import EKFModel
        directory = native._build_directory()
        directory.mkdir(parents=True)
        lock = directory / "lock"  # as a killed build leaves it
        lock.touch()
        os.utime(lock, (time.time() - 3600, time.time() - 3600))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = EKFModel(2, 2, 1, hidden=4, dynamics_layers=1, observation_layers=1)
            filtered = model.filter(torch.randn(3, 4, 2), torch.randn(3, 4, 1))
            filtered.log_likelihoods.sum().backward()
        print(json.dumps({
            "warnings": [str(w.message) for w in caught if w.category is native.NativeLoopsWarning],
            "loops": native.native_loops() is not None, "node": type(filtered.predicted_means.grad_fn).__name__,
            "finite": bool(filtered.log_likelihoods.isfinite().all()), "lock": lock.exists()}))
    """, CXX=str(tmp_path / "no-such-compiler"), TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"),
        **{BACKEND_VARIABLE: "auto"})
    assert len(report["warnings"]) == 1 and "could not build its C++ loops" in report["warnings"][0]
    assert "no C++ compiler" in report["warnings"][0]
    assert "set REPLAY_OVERSHOOTING_BACKEND=fused to skip the build" in report["warnings"][0]
    assert not report["loops"] and report["node"] == "_FilterBackward" and report["finite"]
    assert not report["lock"], "a lock left by a killed build must not block later builds"


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler on this machine")
def test_a_compile_error_is_reported_with_its_file_and_line(tmp_path):
    sources = tmp_path / "csrc"
    shutil.copytree(_source_directory(), sources)
    lines = (sources / "rollout.h").read_text().splitlines()
    line = lines.index('#include "steps.h"') + 2  # 1-based number of the line inserted below it
    lines.insert(line - 1, "this is not C++;")
    (sources / "rollout.h").write_text("\n".join(lines) + "\n")
    report = _run_python(f"""
        import json, warnings
        from pathlib import Path
        from replay_overshooting import native
        native._source_directory = lambda: Path({str(sources)!r})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loops = native.native_loops()
        print(json.dumps({{"loops": loops is not None,
                          "warnings": [str(w.message) for w in caught if w.category is native.NativeLoopsWarning]}}))
    """, TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"))
    assert not report["loops"] and len(report["warnings"]) == 1
    assert f"rollout.h:{line}:" in report["warnings"][0] and "error" in report["warnings"][0], report["warnings"][0]


def test_switched_off_by_the_environment(tmp_path):
    "With the fused backend as the default, a model trains without building (or warning about) the C++ loops."
    report = _run_python("""
        import json, warnings
        import torch
        from replay_overshooting import native
        from replay_overshooting.models import EKFModel
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = EKFModel(2, 2, 1, hidden=4, dynamics_layers=1, observation_layers=1)
            filtered = model.filter(torch.randn(3, 4, 2), torch.randn(3, 4, 1))
            filtered.log_likelihoods.sum().backward()
        print(json.dumps({"warnings": [str(w.message) for w in caught if w.category is native.NativeLoopsWarning],
                          "node": type(filtered.predicted_means.grad_fn).__name__,
                          "built": native._build_directory().exists()}))
    """, **{BACKEND_VARIABLE: "fused"}, TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"))
    assert report == {"warnings": [], "node": "_FilterBackward", "built": False}


_PUSH_ITERATION_FAULTS = """
    import json, os, resource, torch
    from replay_overshooting.models import EKFModel
    from replay_overshooting.native import hold_freed_memory
    from replay_overshooting.objectives import vro
    held = hold_freed_memory() if os.environ["HOLD"] == "1" else None
    torch.manual_seed(0)
    model, y, u = EKFModel(8, 2, 6), torch.randn(16, 50, 2), torch.randn(16, 50, 6)  # the paper-size push sizes
    def iteration():
        model.zero_grad(set_to_none=True)
        vro(model, y, u, iteration=10**6)[0].backward()
    iteration(), iteration()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        iteration()
    print(json.dumps({"held": held, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_hold_freed_memory_keeps_iterations_off_fresh_pages():
    held = _run_python(_PUSH_ITERATION_FAULTS, HOLD="1")
    assert held["held"] is True
    assert held["faults"] < 500, f"{held['faults']} fresh pages per iteration with the memory held"


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the flush is x86's MXCSR mode")
@pytest.mark.skipif(native_loops() is None, reason="the C++ loops are not built here")
def test_native_nodes_flush_subnormals_and_restore_the_thread_mode():
    """Inside a C++ node subnormal floats are zero (x86's FTZ/DAZ, `csrc/common.h`); on return the thread computes
    with them again. A time update whose network adds exactly zero keeps a subnormal mean on the reference path,
    and flushes it on the native one."""
    import torch
    from replay_overshooting.models import ResidualDynamics
    torch.set_flush_denormal(False)
    subnormal = torch.tensor([1e-39])
    assert subnormal.item() != 0 and (subnormal * 1.0).item() != 0
    dynamics = ResidualDynamics(2, hidden=8)
    with torch.no_grad():
        dynamics.f.linears[-1].weight.zero_()
        dynamics.f.linears[-1].bias.zero_()
    mean, cov, Q = subnormal.expand(3, 2), 0.1 * torch.eye(2).expand(3, 2, 2), 0.01 * torch.eye(2)
    reference = dynamics.propagate_belief(mean, cov, None, Q, backend="reference")
    native = dynamics.propagate_belief(mean, cov, None, Q, backend="native")
    assert torch.equal(reference[0], mean)
    assert torch.equal(native[0], torch.zeros_like(mean))
    torch.testing.assert_close(native[1], reference[1], rtol=0, atol=0)
    assert (subnormal * 1.0).item() != 0, "the node left subnormals flushed on this thread"


@pytest.mark.skipif(native_loops() is None, reason="the C++ loops are not built here")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softplus_and_its_slope_match_torch_to_a_few_ulp(dtype):
    """The networks' softplus and sigmoid come from one exponential in a loop of our own (`csrc/activation.h`):
    checked against torch's in float64 over the whole range, the threshold where softplus turns linear, zero, and
    inputs whose exponential vanishes."""
    import torch
    dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    a = torch.cat([torch.randn(20000, dtype=dtype) * 10, torch.linspace(-700, 700, 20001, dtype=dtype),
                   torch.randn(1000, dtype=dtype) * 1e-6,
                   torch.tensor([0.0, 40.0, 40.0001, 39.9999, -80.0, -87.5, -1e4, 1e4, 20.0, -20.0], dtype=dtype)])
    value, slope = native_loops().softplus_with_slope(a)
    exact_value = torch.nn.functional.softplus(a.double(), 1, 40)
    exact_slope = torch.sigmoid(a.double())
    info = torch.finfo(dtype)
    for ours, exact in ((value, exact_value), (slope, exact_slope)):
        normal = exact.abs() > info.tiny * 2 ** 24  # below, the node flushes subnormal intermediates to zero
        error = ((ours.double() - exact).abs() / exact.abs())[normal]
        assert error.max() <= 4 * info.eps, f"{error.max() / info.eps:.1f} ulp"
        assert (ours[~normal].double() - exact[~normal]).abs().max() <= info.tiny * 2 ** 24
    assert torch.equal(value[a > 40], a[a > 40]) and torch.equal(slope[a > 40], torch.ones_like(a[a > 40]))


@pytest.mark.skipif(native_loops() is None, reason="the C++ loops are not built here")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_cholesky_matches_lapack_and_reports_the_same_failures(dtype):
    """`small_cholesky_ex`, the native path's factorisation of small covariances (`gaussian._factorise_detached`),
    against `torch.linalg.cholesky_ex`: the factors where both succeed, and `info` (the first leading minor that
    is not positive definite) for an indefinite matrix, a NaN and a singular one; batch shapes kept, larger
    systems handed to LAPACK."""
    import torch
    dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    for n in (1, 2, 5, 8, 12, 13):
        X = torch.randn(3, 40, n, n + 2, dtype=dtype)
        M = X @ X.mT / n + 1e-2 * torch.eye(n, dtype=dtype)
        M[0, 0, n - 1, n - 1] = -1.0
        M[0, 1, 0, 0] = float("nan")
        M[0, 2] = 0.0
        L, info = native_loops().small_cholesky_ex(M)
        expected_L, expected_info = torch.linalg.cholesky_ex(M)
        assert L.shape == M.shape and info.shape == M.shape[:-2] and info.dtype == torch.int32
        assert torch.equal(info, expected_info), n
        ok = info == 0
        tolerance = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(L[ok], expected_L[ok], atol=tolerance, rtol=tolerance)
        assert torch.equal(L[ok], L[ok].tril())


@pytest.mark.skipif(native_loops() is None, reason="the C++ loops are not built here")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("vector_bytes", [0, 16, 32, 64])
def test_tiled_matrix_product_matches_torch(dtype, vector_bytes):
    """`gemm`, every product of the network passes and the RSSM, C = op(A) B + βC, against torch's, in every
    configuration that selects it: as dispatched on this processor (0) and the portable body at each vector width,
    A or Aᵀ, β = 0 (C's old contents, NaN here, are overwritten) and β = 1, strided rows, row counts that leave
    every partial tile (1-5 rows of a wide tile, 1-7 of a narrow one), widths that leave partial and one-vector
    column tiles, and no terms at all (K = 0)."""
    import torch
    dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for M, N, K in [(1, 1, 1), (5, 7, 3), (6, 16, 64), (13, 17, 5), (16, 64, 64), (16, 8, 64), (16, 14, 64),
                    (128, 64, 8), (64, 64, 128), (9, 33, 0), (12, 64, 14), (31, 8, 64), (47, 40, 16),
                    (10, 4, 9), (11, 4, 4), (12, 4, 3), (14, 4, 2), (15, 4, 5)]:
        for trans_a in (False, True):
            for beta in (0.0, 1.0):
                A = torch.randn(K, M + 3, dtype=dtype)[:, :M] if trans_a else torch.randn(M, K + 3, dtype=dtype)[:, :K]
                B = torch.randn(K, N + 2, dtype=dtype)[:, :N]
                start = torch.randn(M, N + 1, dtype=dtype)[:, :N]
                C = torch.full((M, N + 1), float("nan"), dtype=dtype)[:, :N]
                if beta:
                    C.copy_(start)
                native_loops().tiled_matmul(A, B, C, trans_a, beta, vector_bytes)
                product = (A.mT if trans_a else A) @ B
                expected = product + start if beta else product
                torch.testing.assert_close(C, expected, atol=tolerance * max(K, 1) ** 0.5, rtol=tolerance,
                                           msg=f"M={M} N={N} K={K} trans_a={trans_a} beta={beta}")
