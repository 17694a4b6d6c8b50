// Python entry points of the alignment loss kernels. lrmil/ops/align_loss.py validates the
// tensors and passes raw pointers, sizes and element strides; this file fills the params,
// releases the GIL and picks the CPU or CUDA kernel.
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>
#include <string>

#include "lrmil/align_loss.h"
#include "lrmil/bindings.h"
#include "lrmil/checks.h"

namespace py = pybind11;

namespace lrmil {
namespace {

template <typename T = void>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

DType to_dtype(const char* op, int code) {
  check_dtype_code(op, code);
  return static_cast<DType>(code);
}

// The CUDA kernel, or null in a CPU-only build (Python refuses CUDA tensors before that).
#if defined(LRMIL_WITH_CUDA)
#define LRMIL_CUDA_KERNEL(fn) (fn)
#else
#define LRMIL_CUDA_KERNEL(fn) nullptr
#endif

// Params is deduced from the CPU kernel alone: in a CPU-only build the CUDA one is nullptr.
template <typename T>
struct NonDeduced {
  using type = T;
};

template <typename Params>
void launch(const Params& p, bool cuda, uintptr_t stream, void (*cpu)(const Params&),
            typename NonDeduced<void (*)(const Params&, void*)>::type cuda_fn) {
  if (!cuda) return cpu(p);
  if (cuda_fn == nullptr) throw std::runtime_error("alignment loss: lrmil was built without CUDA kernels");
  cuda_fn(p, ptr(stream));
}

using Strides2 = std::array<int64_t, 2>;
using Strides3 = std::array<int64_t, 3>;
using Strides4 = std::array<int64_t, 4>;

// read_st: whether the kernel reads s and t (the backward does only for the teacher's gradient).
ChildMseParams child_params(int dtype, Strides3 sizes, uintptr_t s, Strides2 s_st, uintptr_t t,
                            Strides3 t_st, uintptr_t w, Strides2 w_st, uintptr_t resid,
                            bool read_st) {
  constexpr const char* op = "child_mse";
  ChildMseParams p;
  p.dtype = to_dtype(op, dtype);
  p.n = sizes[0], p.k = sizes[1], p.d = sizes[2];
  check(p.k >= 1 && p.d >= 1, op, "t (N, K, D) needs K >= 1 and D >= 1");
  if (read_st) {
    check_tensor(op, "s", "(N, D)", ptr(s), {p.n, p.d}, {s_st[0], s_st[1]});
    check_tensor(op, "t", "(N, K, D)", ptr(t), {p.n, p.k, p.d}, {t_st[0], t_st[1], t_st[2]});
  }
  check_tensor(op, "weight", "(N, K)", ptr(w), {p.n, p.k}, {w_st[0], w_st[1]});
  p.s = ptr(s), p.s_sn = s_st[0], p.s_sd = s_st[1];
  p.t = ptr(t), p.t_sn = t_st[0], p.t_sk = t_st[1], p.t_sd = t_st[2];
  p.w = ptr(w), p.w_sn = w_st[0], p.w_sk = w_st[1];
  p.resid = ptr(resid);
  return p;
}

// The sizes and valid mask of block_mse; the forward also checks S and t.
BlockMseParams block_params(int dtype, Strides4 sizes, uintptr_t valid, Strides2 v_st) {
  constexpr const char* op = "block_mse";
  BlockMseParams p;
  p.dtype = to_dtype(op, dtype);
  p.n = sizes[0], p.g = sizes[1], p.r = sizes[2], p.d = sizes[3];
  check(p.r >= 2 && p.g % p.r == 0 && p.d >= 1, op,
        "S (N, G, G, D) needs G a multiple of r >= 2 and D >= 1, got G = " + std::to_string(p.g) +
            ", r = " + std::to_string(p.r) + ", D = " + std::to_string(p.d));
  check_tensor(op, "valid", "(N, K)", ptr(valid), {p.n, p.r * p.r}, {v_st[0], v_st[1]});
  p.valid = ptr<const uint8_t>(valid), p.v_sn = v_st[0], p.v_sk = v_st[1];
  return p;
}

}  // namespace

void bind_align_loss(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def(
      "child_mse_fwd",
      [](int dtype, bool cuda, uintptr_t stream, Strides3 sizes, uintptr_t s, Strides2 s_st,
         uintptr_t t, Strides3 t_st, uintptr_t w, Strides2 w_st, uintptr_t loss, uintptr_t resid,
         uintptr_t partial) {
        ChildMseParams p = child_params(dtype, sizes, s, s_st, t, t_st, w, w_st, resid, true);
        check_tensor("child_mse", "loss", "(N,)", ptr(loss), {p.n}, {1});
        if (cuda) check_tensor("child_mse", "partial", "(N, tiles)", ptr(partial), {p.n, cuda_align_tiles(p.d)}, {1, 1});
        p.loss = ptr(loss);
        p.partial = ptr(partial);
        launch(p, cuda, stream, child_mse_fwd_cpu, LRMIL_CUDA_KERNEL(child_mse_fwd_cuda));
      },
      nogil,
      "child_mse forward: writes loss (N,) and, when resid != 0, s minus the weighted child mean "
      "(N, D); "
      "on CUDA, partial is (N, cuda_align_tiles(D)) scratch.");

  m.def(
      "child_mse_bwd",
      [](int dtype, bool cuda, uintptr_t stream, Strides3 sizes, uintptr_t s, Strides2 s_st,
         uintptr_t t, Strides3 t_st, uintptr_t w, Strides2 w_st, uintptr_t resid, uintptr_t grad,
         uintptr_t ds, uintptr_t dt) {
        ChildMseParams p = child_params(dtype, sizes, s, s_st, t, t_st, w, w_st, resid, dt != 0);
        check_tensor("child_mse", "grad", "(N,)", ptr(grad), {p.n}, {1});
        if (ds != 0) check_tensor("child_mse", "resid", "(N, D)", ptr(resid), {p.n, p.d}, {p.d, 1});
        p.grad = ptr(grad), p.ds = ptr(ds), p.dt = ptr(dt);
        launch(p, cuda, stream, child_mse_bwd_cpu, LRMIL_CUDA_KERNEL(child_mse_bwd_cuda));
      },
      nogil,
      "child_mse backward: writes ds (N, D) from resid when ds != 0 and dt (N, K, D) from s and t "
      "when dt != 0.");

  m.def(
      "block_mse_fwd",
      [](int dtype, bool cuda, uintptr_t stream, Strides4 sizes, uintptr_t S, Strides4 S_st,
         uintptr_t t, Strides3 t_st, uintptr_t valid, Strides2 v_st, uintptr_t loss,
         uintptr_t resid, uintptr_t partial) {
        constexpr const char* op = "block_mse";
        BlockMseParams p = block_params(dtype, sizes, valid, v_st);
        const int64_t k = p.r * p.r;
        check_tensor(op, "S", "(N, G, G, D)", ptr(S), {p.n, p.g, p.g, p.d}, {S_st[0], S_st[1], S_st[2], S_st[3]});
        check_tensor(op, "t", "(N, K, D)", ptr(t), {p.n, k, p.d}, {t_st[0], t_st[1], t_st[2]});
        check_tensor(op, "loss", "(N,)", ptr(loss), {p.n}, {1});
        if (resid != 0) check_tensor(op, "resid", "(N, K, D)", ptr(resid), {p.n, k, p.d}, {k * p.d, p.d, 1});
        if (cuda) {
          check_tensor(op, "partial", "(N, K, tiles)", ptr(partial), {p.n, k, cuda_align_tiles(p.d)}, {1, 1, 1});
        }
        p.S = ptr(S), p.S_sn = S_st[0], p.S_sy = S_st[1], p.S_sx = S_st[2], p.S_sd = S_st[3];
        p.t = ptr(t), p.t_sn = t_st[0], p.t_sk = t_st[1], p.t_sd = t_st[2];
        p.loss = ptr(loss);
        p.resid = ptr(resid);
        p.partial = ptr(partial);
        launch(p, cuda, stream, block_mse_fwd_cpu, LRMIL_CUDA_KERNEL(block_mse_fwd_cuda));
      },
      nogil,
      "block_mse forward: writes loss (N,) and, when resid != 0, the block means minus t "
      "(N, K, D). sizes = (N, G, r, D); on CUDA, partial is (N, r * r, cuda_align_tiles(D)) "
      "scratch.");

  m.def("align_loss_cuda_tiles", &cuda_align_tiles, py::arg("d"),
        "Feature tiles per row (and child) of the CUDA alignment loss kernels.");

  m.def(
      "block_mse_bwd",
      [](int dtype, bool cuda, uintptr_t stream, Strides4 sizes, uintptr_t valid, Strides2 v_st,
         uintptr_t resid, uintptr_t grad, uintptr_t dS, uintptr_t dt) {
        constexpr const char* op = "block_mse";
        BlockMseParams p = block_params(dtype, sizes, valid, v_st);
        const int64_t k = p.r * p.r;
        check_tensor(op, "resid", "(N, K, D)", ptr(resid), {p.n, k, p.d}, {k * p.d, p.d, 1});
        check_tensor(op, "grad", "(N,)", ptr(grad), {p.n}, {1});
        check_tensor(op, "dS", "(N, G, G, D)", ptr(dS), {p.n, p.g, p.g, p.d},
                     {p.g * p.g * p.d, p.g * p.d, p.d, 1});
        p.resid = ptr(resid), p.grad = ptr(grad), p.dS = ptr(dS), p.dt = ptr(dt);
        launch(p, cuda, stream, block_mse_bwd_cpu, LRMIL_CUDA_KERNEL(block_mse_bwd_cuda));
      },
      nogil,
      "block_mse backward: writes dS (N, G, G, D) and, when dt != 0, dt (N, K, D), from the "
      "forward's resid alone.");
}

}  // namespace lrmil
