"""The kernel multiplies with torch's own BLAS, checked once; a kernel that cannot be used says why."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.core.errors import UserError
from pipeline.model import recurrence

ROOT = Path(__file__).resolve().parents[1]

# Another BLAS, right but slow, that counts its calls: a process that loads it with RTLD_GLOBAL
# (LD_PRELOAD, sys.setdlopenflags) puts its sgemm_ before torch's in every process-wide lookup.
OTHER_BLAS = """
extern "C" {
long other_blas_calls = 0;
}

template <typename T>
static void gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const T* alpha,
                 const T* a, const int* lda, const T* b, const int* ldb, const T* beta, T* c, const int* ldc) {
  __atomic_add_fetch(&other_blas_calls, 1, __ATOMIC_RELAXED);
  const bool at = *ta != 'N' && *ta != 'n', bt = *tb != 'N' && *tb != 'n';
  for (int j = 0; j < *n; ++j) {
    for (int i = 0; i < *m; ++i) {
      T sum = 0;
      for (int p = 0; p < *k; ++p) {
        sum += (at ? a[p + i * *lda] : a[i + p * *lda]) * (bt ? b[j + p * *ldb] : b[p + j * *ldb]);
      }
      c[i + j * *ldc] = (*beta == 0 ? T(0) : *beta * c[i + j * *ldc]) + *alpha * sum;
    }
  }
}

extern "C" void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                       const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc) {
  gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

extern "C" void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
                       const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
                       const int* ldc) {
  gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
"""

LOADED_FIRST = """
import ctypes, sys
other = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
import torch
from pipeline.model import recurrence
kernel = recurrence.compiled()
assert kernel is not None
calls = ctypes.c_long.in_dll(other, "other_blas_calls")
g = torch.Generator().manual_seed(0)
pre, weight = torch.randn(2, 6, 4, 5, generator=g), torch.randn(2, 5, 5, generator=g)
before = calls.value
kernel.forward_(pre, weight, 1)
kernel.backward(pre, pre, weight, 1)
assert calls.value == before, "the kernel multiplied with the BLAS loaded first"
print(recurrence.kernel_info()["blas"]["library"])
"""


def test_the_kernel_takes_torchs_blas_not_the_first_one_loaded(tmp_path):
    """The kernel's products, and so its numbers, do not depend on what else the process loaded."""
    from torch.utils.cpp_extension import get_cxx_compiler

    source = tmp_path / "other_blas.cpp"
    source.write_text(OTHER_BLAS)
    other = tmp_path / "libother_blas.so"
    subprocess.run([get_cxx_compiler(), "-shared", "-fPIC", "-o", str(other), str(source)], check=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PIPELINE_PURE_PYTORCH", None)
    run = subprocess.run(
        [sys.executable, "-c", LOADED_FIRST, str(other)], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    library = Path(run.stdout.strip())
    assert library.name.startswith(("libtorch_cpu", "libopenblas", "libmkl"))


def test_a_usable_kernel_reports_its_library_and_blas():
    info = recurrence.require_kernel(allow_fallback=False)
    assert info["recurrence"] == "compiled" and info["reason"] is None
    assert Path(info["kernel"]).is_file()
    blas = info["blas"]
    assert blas["symbols"] == ["sgemm_", "dgemm_"] and blas["integer_bits"] == 32
    if torch.backends.mkl.is_available():  # the pinned x86 wheels: MKL, linked into libtorch_cpu
        assert blas["thread_cap"] == "MKL_Set_Num_Threads_Local"
        assert "Math Kernel Library" in blas["version"]


def _fake_sgemm(integer: type[ctypes._SimpleCData]):
    """A column-major Fortran sgemm_ ('N', 'N') that reads its sizes as `integer`s and, as a
    BLAS's xerbla does, returns without touching C when a size is impossible."""
    i, f = ctypes.POINTER(integer), ctypes.POINTER(ctypes.c_float)
    signature = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, i, i, i, f, f, i, f, i, f, f, i)

    def sgemm(_ta, _tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        m, n, k, lda, ldb, ldc = (p[0] for p in (m, n, k, lda, ldb, ldc))
        if min(m, n, k) < 0 or lda < max(1, m) or ldb < max(1, k) or ldc < max(1, m):
            return
        for col in range(n):
            for row in range(m):
                total = sum(a[row + p * lda] * b[p + col * ldb] for p in range(k))
                c[row + col * ldc] = beta[0] * c[row + col * ldc] + alpha[0] * total

    return signature(sgemm)


@pytest.mark.parametrize(("integer", "problem"), [(ctypes.c_int32, None), (ctypes.c_int64, "reads 64-bit integers")])
def test_the_check_tells_a_64_bit_integer_blas_from_a_32_bit_one(integer, problem):
    kernel = recurrence.compiled()
    assert kernel is not None
    fake = _fake_sgemm(integer)
    found = recurrence._gemm_problem(kernel, torch.float32, ctypes.cast(fake, ctypes.c_void_p).value)
    assert found == problem or problem in found


def test_a_kernel_whose_blas_fails_the_check_is_not_used(monkeypatch):
    monkeypatch.delenv("PIPELINE_PURE_PYTORCH", raising=False)
    monkeypatch.setattr(recurrence, "_KERNEL", None)
    monkeypatch.setattr(recurrence, "_blas_problem", lambda kernel: "sgemm_ from libblas64.so reads 64-bit integers")
    assert recurrence.compiled() is None
    info = recurrence.require_kernel(allow_fallback=True)
    assert info == {
        "recurrence": "fallback",
        "kernel": None,
        "blas": None,
        "reason": "sgemm_ from libblas64.so reads 64-bit integers",
    }
    with pytest.raises(UserError) as raised:
        recurrence.require_kernel(allow_fallback=False)
    message = str(raised.value)
    assert "\n" not in message
    assert "reads 64-bit integers" in message and "set train.allow_fallback: true" in message


def test_a_build_that_fails_is_one_line_naming_the_compilers_error(monkeypatch):
    def failing(load):
        raise RuntimeError(
            "Error building extension 'pipeline_recurrence_0': [1/2] c++ -MMD -MF recurrence.o.d -O3\n"
            "FAILED: recurrence.o\n/home/x/recurrence.cpp:3:1: error: 'foo' was not declared in this scope\n"
        )

    monkeypatch.delenv("PIPELINE_PURE_PYTORCH", raising=False)
    monkeypatch.setattr(recurrence, "_KERNEL", None)
    monkeypatch.setattr(recurrence, "_build", failing)
    with pytest.raises(UserError, match=r"\(it did not build: error: 'foo' was not declared in this scope\)"):
        recurrence.require_kernel(allow_fallback=False)


def test_pipeline_pure_pytorch_chooses_the_fallback_on_purpose(monkeypatch):
    monkeypatch.setenv("PIPELINE_PURE_PYTORCH", "1")
    monkeypatch.setattr(recurrence, "_KERNEL", None)
    info = recurrence.require_kernel(allow_fallback=False)  # no error: the fallback was asked for
    assert info["recurrence"] == "fallback" and "PIPELINE_PURE_PYTORCH=1" in info["reason"]
