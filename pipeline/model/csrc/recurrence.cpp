// The tanh recurrence of pipeline/model/recurrence.py, its time loop in C++.
//
// Per time step the work is one small GEMM and a tanh per direction: microseconds, so a
// Python loop spends much of its time dispatching ops. Here the loop runs in C++ on
// independent units, each direction cut into `chunks` batch slices, which run on their own
// threads (OpenMP, torch's own runtime): directions never interact, nor do the rows of a
// batch. Each step's product goes straight to the BLAS torch links, single-threaded inside
// a unit; the arithmetic is the PyTorch loop's, up to the order of float sums.
//
// Measured at batch 32, hidden 64, two directions, 2 threads (per step, forward / backward):
// ATen addmm_ per step with at::parallel_for compiled without OpenMP (serial) and MKL
// threading each tiny product, 21.9 / 17.2 us; now 4.7 / 3.1 us.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <dlfcn.h>

#include <algorithm>
#include <string>
#include <vector>

namespace {

// C (n x m) += A (n x k) B (k x m), all row-major and contiguous, by the BLAS that torch links
// (MKL's Fortran sgemm_/dgemm_), with no ATen op and no tensor per call: at batch 32 the
// dispatch and the views cost more than the product.
using Gemm = void (*)(const char*, const char*, const int*, const int*, const int*, const void*, const void*,
                      const int*, const void*, const int*, const void*, void*, const int*);
// MKL's per-thread thread count (absent from other BLAS): a unit is already one of the threads,
// and MKL would otherwise split each tiny product again.
using SetThreadsLocal = int (*)(int);

struct Blas {
  Gemm sgemm = nullptr, dgemm = nullptr;  // null: ATen's addmm_ does the product
  SetThreadsLocal threads_local = nullptr;
  std::string library, version;
};

// Chosen once, from torch's own library (libtorch_cpu) and the libraries it links, never by a
// process-wide lookup, where whatever came with LD_PRELOAD or RTLD_GLOBAL wins: another BLAS,
// perhaps one with 64-bit integers, and numbers that depend on what else the process loaded.
// recurrence.py checks the choice on a 3 x 3 product before it uses the kernel.
const Blas& blas() {
  static const Blas chosen = [] {
    Blas found;
    Dl_info torch_library;
    if (dladdr(reinterpret_cast<void*>(&at::get_num_threads), &torch_library) == 0) return found;
    void* torch = dlopen(torch_library.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (torch == nullptr) return found;
    found.sgemm = reinterpret_cast<Gemm>(dlsym(torch, "sgemm_"));
    found.dgemm = reinterpret_cast<Gemm>(dlsym(torch, "dgemm_"));
    found.threads_local = reinterpret_cast<SetThreadsLocal>(dlsym(torch, "MKL_Set_Num_Threads_Local"));
    const Gemm any = found.sgemm != nullptr ? found.sgemm : found.dgemm;
    Dl_info gemm_library;
    if (any != nullptr && dladdr(reinterpret_cast<void*>(any), &gemm_library) != 0) found.library = gemm_library.dli_fname;
    if (auto mkl = reinterpret_cast<void (*)(char*, int)>(dlsym(torch, "MKL_Get_Version_String"))) {
      char text[256] = {};
      mkl(text, sizeof text - 1);
      found.version = text;
    } else if (auto openblas = reinterpret_cast<const char* (*)()>(dlsym(torch, "openblas_get_config"))) {
      found.version = std::string("OpenBLAS ") + openblas();
    }
    return found;
  }();
  return chosen;
}

template <typename T>
Gemm blas_gemm() {
  return sizeof(T) == 4 ? blas().sgemm : blas().dgemm;
}

template <typename T>
void gemm_acc(int64_t n, int64_t m, int64_t k, const T* a, const T* b, T* c, const at::TensorOptions& options) {
  const Gemm fn = blas_gemm<T>();
  if (fn != nullptr) {
    // Row-major C = A B is column-major C^T = B^T A^T: the same memory, operands swapped.
    const int M = m, N = n, K = k, lda = m, ldb = k, ldc = m;
    const T one = 1;
    fn("N", "N", &M, &N, &K, &one, b, &lda, a, &ldb, &one, c, &ldc);
    return;
  }
  at::Tensor out = at::from_blob(c, {n, m}, options);
  out.addmm_(at::from_blob(const_cast<T*>(a), {n, k}, options), at::from_blob(const_cast<T*>(b), {k, m}, options));
}

// Calls body(direction, first row, rows) for every unit of a (D, T, B, H) tensor.
template <typename Body>
void for_each_unit(const at::Tensor& x, int64_t chunks, const Body& body) {
  const int64_t directions = x.size(0), batch = x.size(2);
  chunks = std::max<int64_t>(1, std::min(chunks / directions, batch));
  const at::ThreadLocalState state;
  at::parallel_for(0, directions * chunks, 1, [&](int64_t begin, int64_t end) {
    // Grad and inference mode are per thread: a worker takes the caller's, or ATen's
    // in-place checks would refuse the step views (or scoring's inference tensors).
    const at::ThreadLocalStateGuard caller_state(state);
    const SetThreadsLocal local = blas().threads_local;
    const int before = local != nullptr ? local(1) : 0;
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t d = unit / chunks, c = unit % chunks;
      const int64_t lo = c * batch / chunks, hi = (c + 1) * batch / chunks;
      body(d, lo, hi - lo);
    }
    if (local != nullptr) local(before);
  });
}

}  // namespace

// In place on pre (D, T, B, H), with weight (D, H, H): h_t = tanh(pre_t + h_{t-1} W_d^T), h_0 = 0.
//
// tanh is computed as 2 sigmoid(2z) - 1 (ATen's sigmoid is several times faster than its
// tanh on a CPU): with s = (h + 1) / 2 the recurrence becomes
//   s_t = sigmoid(2 pre_t - 2 W_d 1 + s_{t-1} (4 W_d)^T),  s_{-1} = 1/2,
// one product and one sigmoid_ per step. The affine maps in and out of s run on each step's
// rows while they are in cache, rather than as passes over the whole tensor.
void forward_(at::Tensor& pre, const at::Tensor& weight, int64_t chunks) {
  const at::Tensor shift = weight.sum(2).mul(2).contiguous();  // (D, H)
  const at::Tensor w4_t = weight.mul(4).transpose(1, 2).contiguous();
  const int64_t steps = pre.size(1), batch = pre.size(2), hidden = pre.size(3);
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "recurrence_forward", [&] {
    for_each_unit(pre, chunks, [&](int64_t d, int64_t lo, int64_t rows) {
      const scalar_t* w_t = w4_t.data_ptr<scalar_t>() + d * hidden * hidden;
      const at::Tensor slice = pre.select(0, d).narrow(1, lo, rows);  // (T, rows, H)
      const scalar_t* sh = shift.data_ptr<scalar_t>() + d * hidden;
      const int64_t n = rows * hidden;
      std::vector<scalar_t> start(n, scalar_t(0.5));
      const scalar_t* prev = start.data();
      scalar_t* prev_data = nullptr;  // the step before, still in s, once it is no longer read
      for (int64_t t = 0; t < steps; ++t) {
        at::Tensor cur = slice.select(0, t);
        scalar_t* p = cur.data_ptr<scalar_t>();
        for (int64_t r = 0; r < n; r += hidden) {
          for (int64_t k = 0; k < hidden; ++k) p[r + k] = 2 * p[r + k] - sh[k];
        }
        gemm_acc<scalar_t>(rows, hidden, hidden, prev, w_t, p, pre.options());
        cur.sigmoid_();
        if (prev_data != nullptr) {
          for (int64_t i = 0; i < n; ++i) prev_data[i] = 2 * prev_data[i] - 1;
        }
        prev = p;
        prev_data = p;
      }
      for (int64_t i = 0; i < n; ++i) prev_data[i] = 2 * prev_data[i] - 1;
    });
  });
}

// dL/dpre from dL/dout and the states out: g_t = (dL/dh_t + g_{t+1} W) * (1 - h_t^2).
// Each step's rows of dL/dout are copied in while they are needed, not the whole tensor up front.
at::Tensor backward(const at::Tensor& grad_out_, const at::Tensor& out_, const at::Tensor& weight_,
                    int64_t chunks) {
  const at::Tensor grad_out = grad_out_.contiguous(), out = out_.contiguous(), weight = weight_.contiguous();
  at::Tensor grad = at::empty_like(grad_out, at::MemoryFormat::Contiguous);
  const int64_t steps = grad.size(1), batch = grad.size(2), hidden = grad.size(3);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "recurrence_backward", [&] {
    for_each_unit(grad, chunks, [&](int64_t d, int64_t lo, int64_t rows) {
      const scalar_t* w = weight.data_ptr<scalar_t>() + d * hidden * hidden;
      // Step t of this unit: `rows` rows of `hidden`, at the same offset in all three tensors.
      auto at_step = [&](int64_t t) { return ((d * steps + t) * batch + lo) * hidden; };
      scalar_t* g = grad.data_ptr<scalar_t>();
      const scalar_t* up = grad_out.data_ptr<scalar_t>();
      const scalar_t* h = out.data_ptr<scalar_t>();
      const int64_t n = rows * hidden;
      auto times_slope = [&](int64_t t) {
        scalar_t* gp = g + at_step(t);
        const scalar_t* hp = h + at_step(t);
        for (int64_t i = 0; i < n; ++i) gp[i] *= 1 - hp[i] * hp[i];
      };
      std::copy_n(up + at_step(steps - 1), n, g + at_step(steps - 1));
      times_slope(steps - 1);
      for (int64_t t = steps - 1; t > 0; --t) {
        std::copy_n(up + at_step(t - 1), n, g + at_step(t - 1));
        gemm_acc<scalar_t>(rows, hidden, hidden, g + at_step(t), w, g + at_step(t - 1), grad.options());
        times_slope(t - 1);
      }
    });
  });
  return grad;
}

// An inverted-dropout mask shaped like x: 0 with probability p, else 1 / (1 - p). Each value
// comes from a 32-bit hash of (seed, index), a loop the compiler vectorises; torch's CPU
// generator draws one number at a time and costs more than the rest of the layer's input.
at::Tensor dropout_mask(const at::Tensor& x, double p, int64_t seed) {
  at::Tensor mask = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = mask.numel();
  const uint32_t threshold = static_cast<uint32_t>(p * 4294967296.0);
  const uint32_t key = static_cast<uint32_t>(seed) ^ static_cast<uint32_t>(seed >> 32) * 0x9E3779B9u;
  AT_DISPATCH_FLOATING_TYPES(mask.scalar_type(), "dropout_mask", [&] {
    scalar_t* out = mask.data_ptr<scalar_t>();
    const scalar_t keep = static_cast<scalar_t>(1.0 / (1.0 - p));
    for (int64_t i = 0; i < n; ++i) {
      uint32_t z = static_cast<uint32_t>(i) * 0x9E3779B1u + key;  // murmur3's finaliser
      z ^= z >> 16;
      z *= 0x85EBCA6Bu;
      z ^= z >> 13;
      z *= 0xC2B2AE35u;
      z ^= z >> 16;
      out[i] = z >= threshold ? keep : scalar_t(0);
    }
  });
  return mask;
}

// The gradient of top = amax(x, dim 1) for x (A, T, ...): grad goes to the steps that hold the
// maximum, split evenly among ties (saturated tanh units tie at exactly 1). Two passes over x,
// where the ATen ops would make five.
at::Tensor max_backward(const at::Tensor& x_, const at::Tensor& top_, const at::Tensor& grad_) {
  const at::Tensor x = x_.contiguous();
  const at::Tensor top = top_.contiguous(), grad = grad_.contiguous();
  at::Tensor result = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t outer = x.size(0), steps = x.size(1), inner = x.numel() / (outer * steps);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "max_backward", [&] {
    at::parallel_for(0, outer, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> share(inner);
      for (int64_t a = begin; a < end; ++a) {
        const scalar_t* xs = x.data_ptr<scalar_t>() + a * steps * inner;
        const scalar_t* tp = top.data_ptr<scalar_t>() + a * inner;
        const scalar_t* gp = grad.data_ptr<scalar_t>() + a * inner;
        scalar_t* out = result.data_ptr<scalar_t>() + a * steps * inner;
        std::fill(share.begin(), share.end(), scalar_t(0));
        for (int64_t t = 0; t < steps; ++t) {
          for (int64_t i = 0; i < inner; ++i) share[i] += xs[t * inner + i] == tp[i];
        }
        for (int64_t i = 0; i < inner; ++i) share[i] = gp[i] / share[i];
        for (int64_t t = 0; t < steps; ++t) {
          for (int64_t i = 0; i < inner; ++i) out[t * inner + i] = xs[t * inner + i] == tp[i] ? share[i] : 0;
        }
      }
    });
  });
  return result;
}

// Where the products go: the library, its version, the symbols found, the thread cap.
py::dict blas_info() {
  const Blas& chosen = blas();
  auto text = [](const std::string& s) { return s.empty() ? py::object(py::none()) : py::object(py::str(s)); };
  py::list symbols;
  if (chosen.sgemm != nullptr) symbols.append("sgemm_");
  if (chosen.dgemm != nullptr) symbols.append("dgemm_");
  py::dict info;
  info["library"] = text(chosen.library);
  info["version"] = text(chosen.version);
  info["symbols"] = symbols;
  info["thread_cap"] = text(chosen.threads_local != nullptr ? "MKL_Set_Num_Threads_Local" : "");
  return info;
}

// c += a b for 3 x 3 row-major matrices, by the product the recurrence uses (or by the gemm at
// `address`, a test's stand-in). Every integer argument is a 3 followed in memory by `high`:
// a BLAS that reads 64-bit integers sees 3 where high is 0 and, where high is -1, a negative
// size, which it rejects without touching c.
void gemm_probe(at::Tensor& c, const at::Tensor& a, const at::Tensor& b, int64_t high, int64_t address) {
  for (const at::Tensor& x : {c, a, b}) {
    TORCH_CHECK(x.is_contiguous() && x.numel() == 9 && x.scalar_type() == c.scalar_type(),
                "gemm_probe takes three contiguous 3 x 3 matrices of one type");
  }
  const int32_t three[2] = {3, static_cast<int32_t>(high)};
  const int* n = reinterpret_cast<const int*>(three);
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "gemm_probe", [&] {
    const Gemm fn = address != 0 ? reinterpret_cast<Gemm>(static_cast<intptr_t>(address)) : blas_gemm<scalar_t>();
    if (fn == nullptr) {
      gemm_acc<scalar_t>(3, 3, 3, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), c.options());
      return;
    }
    const scalar_t one = 1;
    fn("N", "N", n, n, n, &one, b.data_ptr<scalar_t>(), n, a.data_ptr<scalar_t>(), n, &one, c.data_ptr<scalar_t>(), n);
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("blas_info", &blas_info, "the BLAS the recurrence's products go to");
  m.def("gemm_probe", &gemm_probe, "c += a b (3 x 3) by the recurrence's BLAS, integers padded with `high`");
  m.def("max_backward", &max_backward, "gradient of amax over dim 1",
        py::call_guard<py::gil_scoped_release>());
  m.def("dropout_mask", &dropout_mask, "inverted-dropout mask from a counter-based hash",
        py::call_guard<py::gil_scoped_release>());
  // ATen needs no GIL: other Python threads (predict's batches) run meanwhile.
  m.def("forward_", &forward_, "tanh recurrence, forward, in place",
        py::call_guard<py::gil_scoped_release>());
  m.def("backward", &backward, "tanh recurrence, backward through time",
        py::call_guard<py::gil_scoped_release>());
}
