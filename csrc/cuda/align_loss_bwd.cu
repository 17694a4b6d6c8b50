// CUDA backward kernels of the alignment loss (math in lrmil/align_loss.h), on the forward's
// grids: (row, feature tile) for child_mse, (row, child x feature tile) for block_mse, each thread
// kCudaAlignRun consecutive features with 16-byte loads and stores where aligned. Both start from
// the forward's residuals (child_mse: s - tbar (N, D); block_mse: block means - t (N, K, D), 0 for
// invalid children); children of weight 0 (child_mse) are never read, their gradients written as 0.
#include "common.cuh"
#include "lrmil/align_loss.h"

namespace lrmil {
namespace {

using namespace cuda;
constexpr int E = static_cast<int>(kCudaAlignRun);

template <typename T>
__global__ void child_mse_bwd_kernel(ChildMseParams p, bool vec) {
  using A = acc_t<T>;
  const int64_t i = blockIdx.x;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kCudaAlignTile + threadIdx.x * E;
  if (j0 >= p.d) return;
  const A* __restrict__ w = static_cast<const A*>(p.w) + i * p.w_sn;
  const A total = weight_sum(w, p.k, p.w_sk);
  const A g_scale = static_cast<const A*>(p.grad)[i] * child_mse_scale(total, p.d);
  if (p.ds != nullptr) {  // from the forward's resid alone: s and t are not read
    const A* __restrict__ resid = static_cast<const A*>(p.resid) + i * p.d;
    A ds[E];
#pragma unroll
    for (int e = 0; e < E; ++e) ds[e] = j0 + e < p.d ? child_mse_grad_s(g_scale * total, resid[j0 + e]) : A(0);
    store_run<E>(static_cast<T*>(p.ds) + i * p.d, j0, p.d, vec && p.d % kVec<T> == 0, ds);
  }
  if (p.dt == nullptr) return;
  A sv[E];
  load_run<E>(static_cast<const T*>(p.s) + i * p.s_sn, p.s_sd, j0, p.d, vec, sv);
  const T* __restrict__ t = static_cast<const T*>(p.t) + i * p.t_sn;
  T* __restrict__ dt = static_cast<T*>(p.dt) + i * p.k * p.d;
  const bool vec_out = vec && p.d % kVec<T> == 0;
  for (int64_t c = 0; c < p.k; ++c) {
    const A gw = g_scale * w[c * p.w_sk];
    A out[E] = {};
    if (gw != A(0)) {
      A tv[E];
      load_run<E>(t + c * p.t_sk, p.t_sd, j0, p.d, vec, tv);
#pragma unroll
      for (int e = 0; e < E; ++e) out[e] = child_mse_grad_t(gw, tv[e], sv[e]);
    }
    store_run<E>(dt + c * p.d, j0, p.d, vec_out, out);
  }
}

template <typename T>
__global__ void block_mse_bwd_kernel(BlockMseParams p, bool vec_out) {
  using A = acc_t<T>;
  const int64_t k = p.r * p.r, b = p.g / p.r, tiles = cuda_align_tiles(p.d);
  const int64_t i = blockIdx.x, c = blockIdx.y / tiles, tile = blockIdx.y % tiles;
  const int64_t j0 = tile * kCudaAlignTile + threadIdx.x * E;
  if (j0 >= p.d) return;
  const uint8_t* valid = p.valid + i * p.v_sn;
  const A g_scale = static_cast<const A*>(p.grad)[i] * block_mse_scale<A>(count_valid(valid, k, p.v_sk), p.d);
  const A inv_area = A(1) / A(b * b);
  int64_t y0, x0;
  child_block_origin(c, p.r, b, &y0, &x0);
  const A* __restrict__ resid = static_cast<const A*>(p.resid) + (i * k + c) * p.d;
  A gm[E];
#pragma unroll
  for (int e = 0; e < E; ++e) gm[e] = j0 + e < p.d ? block_mse_grad_m(g_scale, resid[j0 + e]) : A(0);
  if (p.dt != nullptr) {
    A neg[E];
#pragma unroll
    for (int e = 0; e < E; ++e) neg[e] = -gm[e];
    store_run<E>(static_cast<T*>(p.dt) + (i * k + c) * p.d, j0, p.d, vec_out, neg);
  }
#pragma unroll
  for (int e = 0; e < E; ++e) gm[e] *= inv_area;
  T* dS = static_cast<T*>(p.dS) + i * p.g * p.g * p.d;
  for (int64_t y = y0; y < y0 + b; ++y) {
    for (int64_t x = x0; x < x0 + b; ++x) store_run<E>(dS + (y * p.g + x) * p.d, j0, p.d, vec_out, gm);
  }
}

}  // namespace

void child_mse_bwd_cuda(const ChildMseParams& p, void* stream) {
  if (p.n == 0) return;
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "child_mse", [&] {
    constexpr int64_t v = kVec<scalar_t>;
    // s and t are read only for dt; ds and resid are contiguous buffers from torch.
    const bool vec = p.dt == nullptr || (p.s_sd == 1 && vector_ok<scalar_t>(p.s, p.s_sn, v) && p.t_sd == 1 &&
                                         vector_ok<scalar_t>(p.t, p.t_sk, v) && p.t_sn % v == 0);
    const dim3 grid(static_cast<unsigned>(p.n), static_cast<unsigned>(cuda_align_tiles(p.d)));
    child_mse_bwd_kernel<scalar_t>
        <<<grid, static_cast<unsigned>(kCudaAlignThreads), 0, static_cast<cudaStream_t>(stream)>>>(p, vec);
  });
  check_launch("child_mse backward");
}

void block_mse_bwd_cuda(const BlockMseParams& p, void* stream) {
  if (p.n == 0) return;
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "block_mse", [&] {
    // dS, dt and resid are contiguous buffers from torch: rows of D elements.
    const bool vec_out = p.d % kVec<scalar_t> == 0;
    const dim3 grid(static_cast<unsigned>(p.n), static_cast<unsigned>(p.r * p.r * cuda_align_tiles(p.d)));
    block_mse_bwd_kernel<scalar_t>
        <<<grid, static_cast<unsigned>(kCudaAlignThreads), 0, static_cast<cudaStream_t>(stream)>>>(p, vec_out);
  });
  check_launch("block_mse backward");
}

}  // namespace lrmil
