// The tanh recurrence of pipeline/recurrence.py, its time loop in C++.
//
// Per time step the work is one small GEMM and a tanh per direction: microseconds, so a
// Python loop spends much of its time dispatching ops. Here the loop runs in C++ on
// independent units, each direction cut into `chunks` batch slices, which run on their own
// threads: directions never interact, nor do the rows of a batch. Each step is a plain ATen
// addmm_ and tanh_ (or mul_), the same arithmetic as the PyTorch loop.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>

namespace {

// Calls body(direction, first row, rows) for every unit of a (D, T, B, H) tensor.
template <typename Body>
void for_each_unit(const at::Tensor& x, int64_t chunks, const Body& body) {
  const int64_t directions = x.size(0), batch = x.size(2);
  chunks = std::max<int64_t>(1, std::min(chunks / directions, batch));
  at::parallel_for(0, directions * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t d = unit / chunks, c = unit % chunks;
      const int64_t lo = c * batch / chunks, hi = (c + 1) * batch / chunks;
      body(d, lo, hi - lo);
    }
  });
}

}  // namespace

// In place on pre (D, T, B, H), with weight (D, H, H): h_t = tanh(pre_t + h_{t-1} W_d^T), h_0 = 0.
//
// tanh is computed as 2 sigmoid(2z) - 1 (ATen's sigmoid is several times faster than its
// tanh on a CPU): with s = (h + 1) / 2 the recurrence becomes
//   s_t = sigmoid(2 pre_t - 2 W_d 1 + s_{t-1} (4 W_d)^T),  s_{-1} = 1/2,
// one addmm_ and one sigmoid_ per step, and h = 2 s - 1 for all steps at once at the end.
void forward_(at::Tensor& pre, const at::Tensor& weight, int64_t chunks) {
  const at::Tensor shift = weight.sum(2).mul(2).unsqueeze(1).unsqueeze(1);  // (D, 1, 1, H)
  pre.mul_(2).sub_(shift);
  const at::Tensor w4_t = weight.mul(4).transpose(1, 2);
  const int64_t steps = pre.size(1);
  for_each_unit(pre, chunks, [&](int64_t d, int64_t lo, int64_t rows) {
    const at::Tensor w_t = w4_t.select(0, d);
    const at::Tensor slice = pre.select(0, d).narrow(1, lo, rows);  // (T, rows, H)
    at::Tensor prev = at::full({rows, pre.size(3)}, 0.5, pre.options());
    for (int64_t t = 0; t < steps; ++t) {
      at::Tensor cur = slice.select(0, t);
      cur.addmm_(prev, w_t).sigmoid_();
      prev = cur;
    }
  });
  pre.mul_(2).sub_(1);
}

// dL/dpre from dL/dout: g_t = (dL/dh_t + g_{t+1} W) * slope_t, slope_t = 1 - h_t^2.
at::Tensor backward(const at::Tensor& grad_out, const at::Tensor& slope, const at::Tensor& weight,
                    int64_t chunks) {
  at::Tensor grad = grad_out.clone(at::MemoryFormat::Contiguous);
  const int64_t steps = grad.size(1);
  for_each_unit(grad, chunks, [&](int64_t d, int64_t lo, int64_t rows) {
    const at::Tensor w = weight.select(0, d);
    const at::Tensor g = grad.select(0, d).narrow(1, lo, rows);
    const at::Tensor s = slope.select(0, d).narrow(1, lo, rows);
    at::Tensor next = g.select(0, steps - 1);
    next.mul_(s.select(0, steps - 1));
    for (int64_t t = steps - 1; t > 0; --t) {
      at::Tensor cur = g.select(0, t - 1);
      cur.addmm_(next, w).mul_(s.select(0, t - 1));
      next = cur;
    }
  });
  return grad;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // ATen needs no GIL: other Python threads (predict's batches) run meanwhile.
  m.def("forward_", &forward_, "tanh recurrence, forward, in place",
        py::call_guard<py::gil_scoped_release>());
  m.def("backward", &backward, "tanh recurrence, backward through time",
        py::call_guard<py::gil_scoped_release>());
}
