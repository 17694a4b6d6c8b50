// Python entry points of the gated attention pooling kernels. Python (lrmil/ops/attention_pool.py)
// checks shapes, dtypes and devices against the user's tensors; this layer re-checks the raw
// sizes it is handed so that a wrong call raises instead of reading out of bounds, picks the
// CPU or CUDA kernel and releases the GIL while it runs.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "lrmil/attention_pool.h"
#include "lrmil/bindings.h"

namespace py = pybind11;

namespace lrmil {
namespace {

template <typename T> const T* as_ptr(uintptr_t address) {
  return reinterpret_cast<const T*>(address);
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("attention_pool: " + what);
}

AttentionPoolParams make_params(int64_t n_rows, int64_t n_bags, int64_t hidden, int64_t dim,
                                int dtype, uintptr_t proj, int64_t proj_row_stride, uintptr_t x,
                                int64_t x_row_stride, uintptr_t w, uintptr_t b_w,
                                uintptr_t offsets) {
  require(n_rows >= 0 && n_bags >= 0 && hidden >= 1 && dim >= 1,
          "sizes must be T >= 0, B >= 0, L >= 1, D >= 1");
  require(dtype >= 0 && dtype <= 3, "unknown dtype code " + std::to_string(dtype));
  require(proj_row_stride >= 0 && x_row_stride >= 0, "negative row stride");
  require(n_rows == 0 || (proj && x), "null proj or x pointer");
  require(w && b_w && offsets, "null w, b_w or offsets pointer");
  require(n_rows == 0 || n_bags >= 1, "rows given but no bags");
  AttentionPoolParams p;
  p.n_rows = n_rows;
  p.n_bags = n_bags;
  p.hidden = hidden;
  p.dim = dim;
  p.dtype = static_cast<DType>(dtype);
  p.proj = as_ptr<void>(proj);
  p.proj_row_stride = proj_row_stride;
  p.x = as_ptr<void>(x);
  p.x_row_stride = x_row_stride;
  p.w = as_ptr<void>(w);
  p.b_w = as_ptr<void>(b_w);
  p.offsets = as_ptr<int64_t>(offsets);
  return p;
}

// device < 0: CPU; otherwise the CUDA device index, with `stream` a cudaStream_t.
template <typename Cpu, typename Cuda>
void launch(int device, uintptr_t stream, Cpu cpu, Cuda cuda) {
  if (device < 0) {
    py::gil_scoped_release release;
    cpu();
    return;
  }
#if defined(LRMIL_WITH_CUDA)
  py::gil_scoped_release release;
  cuda(reinterpret_cast<void*>(stream));
#else
  (void)stream;
  (void)cuda;
  throw std::runtime_error("attention_pool: lrmil was built without CUDA kernels");
#endif
}

void forward(int64_t n_rows, int64_t n_bags, int64_t hidden, int64_t dim, int dtype,
             uintptr_t proj, int64_t proj_row_stride, uintptr_t x, int64_t x_row_stride,
             uintptr_t w, uintptr_t b_w, uintptr_t offsets, uintptr_t pooled, uintptr_t attn,
             uintptr_t logits, int device, uintptr_t stream) {
  AttentionPoolParams p = make_params(n_rows, n_bags, hidden, dim, dtype, proj, proj_row_stride,
                                      x, x_row_stride, w, b_w, offsets);
  require((n_bags == 0 || pooled) && (n_rows == 0 || (attn && logits)), "null output pointer");
  p.pooled = reinterpret_cast<void*>(pooled);
  p.attn = reinterpret_cast<void*>(attn);
  p.logits = reinterpret_cast<void*>(logits);
  launch(
      device, stream, [&] { attention_pool_forward_cpu(p); },
      [&](void* s) {
#if defined(LRMIL_WITH_CUDA)
        attention_pool_forward_cuda(p, device, s);
#else
        (void)s;
#endif
      });
}

void backward(int64_t n_rows, int64_t n_bags, int64_t hidden, int64_t dim, int dtype,
              uintptr_t proj, int64_t proj_row_stride, uintptr_t x, int64_t x_row_stride,
              uintptr_t w, uintptr_t b_w, uintptr_t offsets, uintptr_t attn,
              uintptr_t grad_pooled, int64_t grad_pooled_row_stride, uintptr_t grad_attn,
              uintptr_t grad_logits, uintptr_t grad_proj, uintptr_t grad_x, uintptr_t grad_w,
              uintptr_t grad_b_w, int device, uintptr_t stream) {
  AttentionPoolParams p = make_params(n_rows, n_bags, hidden, dim, dtype, proj, proj_row_stride,
                                      x, x_row_stride, w, b_w, offsets);
  require(grad_pooled_row_stride >= 0, "negative grad_pooled row stride");
  require(n_rows == 0 || (attn && grad_pooled && grad_proj), "null pointer");
  require(grad_w && grad_b_w, "null grad_w or grad_b_w pointer");
  p.attn = reinterpret_cast<void*>(attn);
  p.grad_pooled = as_ptr<void>(grad_pooled);
  p.grad_pooled_row_stride = grad_pooled_row_stride;
  p.grad_attn = as_ptr<void>(grad_attn);      // may be null: no gradient for attn
  p.grad_logits = as_ptr<void>(grad_logits);  // may be null: no gradient for logits
  p.grad_proj = reinterpret_cast<void*>(grad_proj);
  p.grad_x = reinterpret_cast<void*>(grad_x);  // may be null: x needs no gradient
  p.grad_w = reinterpret_cast<void*>(grad_w);
  p.grad_b_w = reinterpret_cast<void*>(grad_b_w);
  launch(
      device, stream, [&] { attention_pool_backward_cpu(p); },
      [&](void* s) {
#if defined(LRMIL_WITH_CUDA)
        attention_pool_backward_cuda(p, device, s);
#else
        (void)s;
#endif
      });
}

}  // namespace

void bind_attention_pool(py::module_& m) {
  m.def("attention_pool_forward", &forward,
        "Gated attention pooling forward on raw buffers (see lrmil/ops/attention_pool.py).",
        py::arg("n_rows"), py::arg("n_bags"), py::arg("hidden"), py::arg("dim"),
        py::arg("dtype"), py::arg("proj"), py::arg("proj_row_stride"), py::arg("x"),
        py::arg("x_row_stride"), py::arg("w"), py::arg("b_w"), py::arg("offsets"),
        py::arg("pooled"), py::arg("attn"), py::arg("logits"), py::arg("device"),
        py::arg("stream"));
  m.def("attention_pool_backward", &backward,
        "Gated attention pooling backward on raw buffers (see lrmil/ops/attention_pool.py).",
        py::arg("n_rows"), py::arg("n_bags"), py::arg("hidden"), py::arg("dim"),
        py::arg("dtype"), py::arg("proj"), py::arg("proj_row_stride"), py::arg("x"),
        py::arg("x_row_stride"), py::arg("w"), py::arg("b_w"), py::arg("offsets"),
        py::arg("attn"), py::arg("grad_pooled"), py::arg("grad_pooled_row_stride"),
        py::arg("grad_attn"), py::arg("grad_logits"), py::arg("grad_proj"), py::arg("grad_x"),
        py::arg("grad_w"), py::arg("grad_b_w"), py::arg("device"), py::arg("stream"));
}

}  // namespace lrmil
