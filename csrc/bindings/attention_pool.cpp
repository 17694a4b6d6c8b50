// Python entry points of the gated attention pooling kernels. lrmil/ops/attention_pool.py checks
// shapes, dtypes and devices against the user's tensors; this layer re-checks the raw sizes it is
// handed (lrmil/checks.h) so that a wrong call raises instead of reading out of bounds, picks the
// CPU or CUDA kernel and releases the GIL while it runs.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "lrmil/attention_pool.h"
#include "lrmil/bindings.h"
#include "lrmil/checks.h"

namespace py = pybind11;

namespace lrmil {
namespace {

constexpr const char* kOp = "gated_attention_pool";

template <typename T> const T* as_ptr(uintptr_t address) {
  return reinterpret_cast<const T*>(address);
}

int64_t acc_bytes(int dtype) { return static_cast<DType>(dtype) == DType::Float64 ? 8 : 4; }

AttentionPoolParams make_params(int64_t n_rows, int64_t n_bags, int64_t hidden, int64_t dim,
                                int dtype, uintptr_t proj, int64_t proj_row_stride, uintptr_t x,
                                int64_t x_row_stride, uintptr_t w, uintptr_t b_w,
                                uintptr_t offsets) {
  check_dtype_code(kOp, dtype);
  check(hidden >= 1 && dim >= 1, kOp, "w (L,) and x (T, D) need L >= 1 and D >= 1, got L = " +
                                          std::to_string(hidden) + ", D = " + std::to_string(dim));
  check_tensor(kOp, "proj", "(T, 2L)", as_ptr<void>(proj), {n_rows, 2 * hidden}, {proj_row_stride, 1});
  check_rows(kOp, "proj", "(T, 2L)", n_rows, 2 * hidden, proj_row_stride);
  check_tensor(kOp, "x", "(T, D)", as_ptr<void>(x), {n_rows, dim}, {x_row_stride, 1});
  check_rows(kOp, "x", "(T, D)", n_rows, dim, x_row_stride);
  check_tensor(kOp, "w", "(L,)", as_ptr<void>(w), {hidden}, {1});
  check_tensor(kOp, "b_w", "()", as_ptr<void>(b_w), {1}, {1});
  check_tensor(kOp, "offsets", "(B + 1,)", as_ptr<void>(offsets), {n_bags + 1}, {1});
  check(n_rows == 0 || n_bags >= 1, kOp, "x has " + std::to_string(n_rows) + " rows but offsets no bag");
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

// The CUDA plan and workspace must be what cuda_pool_layout asks for.
void set_cuda_buffers(AttentionPoolParams& p, bool backward, uintptr_t plan, uintptr_t workspace,
                      int64_t workspace_bytes) {
  const CudaPoolLayout l = cuda_pool_layout(p.n_rows, p.n_bags, p.hidden, p.dim,
                                            acc_bytes(static_cast<int>(p.dtype)), backward);
  check_tensor(kOp, "plan", "(2, B + 1)", as_ptr<void>(plan), {2, p.n_bags + 1}, {p.n_bags + 1, 1});
  check(workspace != 0 && workspace_bytes >= l.bytes, kOp,
        "the CUDA workspace needs " + std::to_string(l.bytes) + " bytes, got " +
            std::to_string(workspace_bytes));
  p.plan = as_ptr<int64_t>(plan);
  p.workspace = reinterpret_cast<void*>(workspace);
  p.workspace_bytes = workspace_bytes;
}

template <typename Cpu, typename Cuda>
void launch(bool cuda, Cpu cpu, Cuda cuda_fn) {
  py::gil_scoped_release release;
  if (!cuda) return cpu();
#if defined(LRMIL_WITH_CUDA)
  cuda_fn();
#else
  (void)cuda_fn;
  throw std::runtime_error(std::string(kOp) + ": lrmil was built without CUDA kernels");
#endif
}

void forward(int64_t n_rows, int64_t n_bags, int64_t hidden, int64_t dim, int dtype,
             uintptr_t proj, int64_t proj_row_stride, uintptr_t x, int64_t x_row_stride,
             uintptr_t w, uintptr_t b_w, uintptr_t offsets, uintptr_t pooled, uintptr_t attn,
             uintptr_t logits, bool cuda, uintptr_t stream, uintptr_t plan, uintptr_t workspace,
             int64_t workspace_bytes) {
  AttentionPoolParams p = make_params(n_rows, n_bags, hidden, dim, dtype, proj, proj_row_stride,
                                      x, x_row_stride, w, b_w, offsets);
  check_tensor(kOp, "pooled", "(B, D)", as_ptr<void>(pooled), {n_bags, dim}, {dim, 1});
  check_tensor(kOp, "attn", "(T,)", as_ptr<void>(attn), {n_rows}, {1});
  check_tensor(kOp, "logits", "(T,)", as_ptr<void>(logits), {n_rows}, {1});
  p.pooled = reinterpret_cast<void*>(pooled);
  p.attn = reinterpret_cast<void*>(attn);
  p.logits = reinterpret_cast<void*>(logits);
  if (cuda) set_cuda_buffers(p, false, plan, workspace, workspace_bytes);
  launch(
      cuda, [&] { attention_pool_forward_cpu(p); },
      [&] {
#if defined(LRMIL_WITH_CUDA)
        attention_pool_forward_cuda(p, reinterpret_cast<void*>(stream));
#else
        (void)stream;
#endif
      });
}

void backward(int64_t n_rows, int64_t n_bags, int64_t hidden, int64_t dim, int dtype,
              uintptr_t proj, int64_t proj_row_stride, uintptr_t x, int64_t x_row_stride,
              uintptr_t w, uintptr_t b_w, uintptr_t offsets, uintptr_t attn,
              uintptr_t grad_pooled, int64_t grad_pooled_row_stride, uintptr_t grad_attn,
              uintptr_t grad_logits, uintptr_t grad_proj, uintptr_t grad_x, uintptr_t grad_w,
              uintptr_t grad_b_w, bool cuda, uintptr_t stream, uintptr_t plan,
              uintptr_t workspace, int64_t workspace_bytes) {
  AttentionPoolParams p = make_params(n_rows, n_bags, hidden, dim, dtype, proj, proj_row_stride,
                                      x, x_row_stride, w, b_w, offsets);
  check_tensor(kOp, "attn", "(T,)", as_ptr<void>(attn), {n_rows}, {1});
  // Gradients of sums arrive as expanded views: a row stride of 0 is fine for grad_pooled.
  check_tensor(kOp, "grad_pooled", "(B, D)", as_ptr<void>(grad_pooled), {n_bags, dim},
               {grad_pooled_row_stride, 1});
  check_tensor(kOp, "grad_proj", "(T, 2L)", as_ptr<void>(grad_proj), {n_rows, 2 * hidden}, {2 * hidden, 1});
  check_tensor(kOp, "grad_w", "(L,)", as_ptr<void>(grad_w), {hidden}, {1});
  check_tensor(kOp, "grad_b_w", "()", as_ptr<void>(grad_b_w), {1}, {1});
  p.attn = reinterpret_cast<void*>(attn);
  p.grad_pooled = as_ptr<void>(grad_pooled);
  p.grad_pooled_row_stride = grad_pooled_row_stride;
  p.grad_attn = as_ptr<void>(grad_attn);      // may be null: no gradient for attn
  p.grad_logits = as_ptr<void>(grad_logits);  // may be null: no gradient for logits
  p.grad_proj = reinterpret_cast<void*>(grad_proj);
  p.grad_x = reinterpret_cast<void*>(grad_x);  // may be null: x needs no gradient
  p.grad_w = reinterpret_cast<void*>(grad_w);
  p.grad_b_w = reinterpret_cast<void*>(grad_b_w);
  if (cuda) set_cuda_buffers(p, true, plan, workspace, workspace_bytes);
  launch(
      cuda, [&] { attention_pool_backward_cpu(p); },
      [&] {
#if defined(LRMIL_WITH_CUDA)
        attention_pool_backward_cuda(p, reinterpret_cast<void*>(stream));
#else
        (void)stream;
#endif
      });
}

py::dict cuda_layout(int64_t n_rows, int64_t n_bags, int64_t hidden, int64_t dim, int dtype,
                     bool backward) {
  check_dtype_code(kOp, dtype);
  check(n_rows >= 0 && n_bags >= 0 && hidden >= 1 && dim >= 1, kOp,
        "sizes must be T >= 0, B >= 0, L >= 1, D >= 1");
  const CudaPoolLayout l = cuda_pool_layout(n_rows, n_bags, hidden, dim, acc_bytes(dtype), backward);
  py::dict d;
  d["chunk_rows"] = l.chunk_rows;
  d["max_chunks"] = l.max_chunks;
  d["max_slots"] = l.max_slots;
  d["gate_blocks"] = l.gate_blocks;
  d["hidden_tiles"] = l.hidden_tiles;
  d["bytes"] = l.bytes;
  return d;
}

}  // namespace

void bind_attention_pool(py::module_& m) {
  m.def("attention_pool_forward", &forward,
        "Gated attention pooling forward on raw buffers (see lrmil/ops/attention_pool.py).",
        py::arg("n_rows"), py::arg("n_bags"), py::arg("hidden"), py::arg("dim"),
        py::arg("dtype"), py::arg("proj"), py::arg("proj_row_stride"), py::arg("x"),
        py::arg("x_row_stride"), py::arg("w"), py::arg("b_w"), py::arg("offsets"),
        py::arg("pooled"), py::arg("attn"), py::arg("logits"), py::arg("cuda"),
        py::arg("stream"), py::arg("plan"), py::arg("workspace"), py::arg("workspace_bytes"));
  m.def("attention_pool_backward", &backward,
        "Gated attention pooling backward on raw buffers (see lrmil/ops/attention_pool.py).",
        py::arg("n_rows"), py::arg("n_bags"), py::arg("hidden"), py::arg("dim"),
        py::arg("dtype"), py::arg("proj"), py::arg("proj_row_stride"), py::arg("x"),
        py::arg("x_row_stride"), py::arg("w"), py::arg("b_w"), py::arg("offsets"),
        py::arg("attn"), py::arg("grad_pooled"), py::arg("grad_pooled_row_stride"),
        py::arg("grad_attn"), py::arg("grad_logits"), py::arg("grad_proj"), py::arg("grad_x"),
        py::arg("grad_w"), py::arg("grad_b_w"), py::arg("cuda"), py::arg("stream"),
        py::arg("plan"), py::arg("workspace"), py::arg("workspace_bytes"));
  m.def("attention_pool_cuda_layout", &cuda_layout,
        "The CUDA launch plan for these sizes: chunk rows, grid bounds and workspace bytes.",
        py::arg("n_rows"), py::arg("n_bags"), py::arg("hidden"), py::arg("dim"),
        py::arg("dtype"), py::arg("backward"));
}

}  // namespace lrmil
