// CUDA backward kernels of the alignment loss (math in lrmil/align_loss.h). One block per row,
// threads over features; block_mse recomputes the block means from S instead of reading stored
// (N, K, D) means.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "lrmil/align_loss.h"

namespace lrmil {
namespace {

constexpr int kMaxThreads = 256;

int threads_for(int64_t d) {
  const int64_t warps = (d + 31) / 32;
  return static_cast<int>(warps * 32 < kMaxThreads ? (warps < 1 ? 32 : warps * 32) : kMaxThreads);
}

void check_launch(const char* name) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(name) + ": " + cudaGetErrorString(err));
}

template <typename T>
__global__ void child_mse_bwd_kernel(ChildMseParams p) {
  using A = acc_t<T>;
  const int64_t i = blockIdx.x;
  const T* s = static_cast<const T*>(p.s) + i * p.s_sn;
  const T* t = static_cast<const T*>(p.t) + i * p.t_sn;
  const A* w = static_cast<const A*>(p.w) + i * p.w_sn;
  const A* tbar = p.ds == nullptr ? nullptr : static_cast<const A*>(p.tbar) + i * p.d;
  T* ds = p.ds == nullptr ? nullptr : static_cast<T*>(p.ds) + i * p.d;
  T* dt = p.dt == nullptr ? nullptr : static_cast<T*>(p.dt) + i * p.k * p.d;
  const A total = weight_sum(w, p.k, p.w_sk);
  const A g_scale = static_cast<const A*>(p.grad)[i] * child_mse_scale(total, p.d);
  for (int64_t d = threadIdx.x; d < p.d; d += blockDim.x) {
    const A sv = load(s + d * p.s_sd);
    if (ds != nullptr) store(ds + d, child_mse_grad_s(g_scale * total, sv, tbar[d]));
    if (dt == nullptr) continue;
    for (int64_t c = 0; c < p.k; ++c) {
      store(dt + c * p.d + d, child_mse_grad_t(g_scale * w[c * p.w_sk], A(load(t + c * p.t_sk + d * p.t_sd)), sv));
    }
  }
}

template <typename T>
__global__ void block_mse_bwd_kernel(BlockMseParams p) {
  using A = acc_t<T>;
  const int64_t i = blockIdx.x, k = p.r * p.r, b = p.g / p.r;
  const T* S = static_cast<const T*>(p.S) + i * p.S_sn;
  const T* t = static_cast<const T*>(p.t) + i * p.t_sn;
  const uint8_t* valid = p.valid + i * p.v_sn;
  T* dS = static_cast<T*>(p.dS) + i * p.g * p.g * p.d;
  T* dt = p.dt == nullptr ? nullptr : static_cast<T*>(p.dt) + i * k * p.d;
  const A g_scale = static_cast<const A*>(p.grad)[i] * block_mse_scale<A>(count_valid(valid, k, p.v_sk), p.d);
  const A inv_area = A(1) / A(b * b);
  for (int64_t d = threadIdx.x; d < p.d; d += blockDim.x) {
    for (int64_t c = 0; c < k; ++c) {
      int64_t y0, x0;
      child_block_origin(c, p.r, b, &y0, &x0);
      A gm = 0;
      if (valid[c * p.v_sk]) {
        A m = 0;
        for (int64_t y = y0; y < y0 + b; ++y)
          for (int64_t x = x0; x < x0 + b; ++x) m += load(S + y * p.S_sy + x * p.S_sx + d * p.S_sd);
        gm = block_mse_grad_m(g_scale, m * inv_area, A(load(t + c * p.t_sk + d * p.t_sd)));
      }
      if (dt != nullptr) store(dt + c * p.d + d, -gm);
      gm *= inv_area;
      for (int64_t y = y0; y < y0 + b; ++y)
        for (int64_t x = x0; x < x0 + b; ++x) store(dS + (y * p.g + x) * p.d + d, gm);
    }
  }
}

}  // namespace

void child_mse_bwd_cuda(const ChildMseParams& p, void* stream) {
  if (p.n == 0) return;
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "child_mse", [&] {
    child_mse_bwd_kernel<scalar_t>
        <<<(unsigned)p.n, threads_for(p.d), 0, static_cast<cudaStream_t>(stream)>>>(p);
  });
  check_launch("child_mse_bwd");
}

void block_mse_bwd_cuda(const BlockMseParams& p, void* stream) {
  if (p.n == 0) return;
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "block_mse", [&] {
    block_mse_bwd_kernel<scalar_t>
        <<<(unsigned)p.n, threads_for(p.d), 0, static_cast<cudaStream_t>(stream)>>>(p);
  });
  check_launch("block_mse_bwd");
}

}  // namespace lrmil
