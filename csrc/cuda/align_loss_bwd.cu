// CUDA backward kernels of the alignment loss (math in lrmil/align_loss.h), on the forward's
// grids: (row, feature tile) for child_mse, (row, child x feature tile) for block_mse, each thread
// kCudaAlignRun consecutive features with 16-byte loads and stores where aligned. block_mse
// recomputes the block means from S instead of reading stored (N, K, D) means; children of weight
// 0 (child_mse) and invalid children (block_mse) are never read, their gradients written as 0.
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
  const T* __restrict__ s = static_cast<const T*>(p.s) + i * p.s_sn;
  const A* __restrict__ w = static_cast<const A*>(p.w) + i * p.w_sn;
  const A total = weight_sum(w, p.k, p.w_sk);
  const A g_scale = static_cast<const A*>(p.grad)[i] * child_mse_scale(total, p.d);
  A sv[E];
  load_run<E>(s, p.s_sd, j0, p.d, vec, sv);
  if (p.ds != nullptr) {
    const A* __restrict__ tbar = static_cast<const A*>(p.tbar) + i * p.d;
    A ds[E];
#pragma unroll
    for (int e = 0; e < E; ++e) ds[e] = j0 + e < p.d ? child_mse_grad_s(g_scale * total, sv[e], tbar[j0 + e]) : A(0);
    store_run<E>(static_cast<T*>(p.ds) + i * p.d, j0, p.d, vec && p.d % kVec<T> == 0, ds);
  }
  if (p.dt == nullptr) return;
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
__global__ void block_mse_bwd_kernel(BlockMseParams p, bool vec) {
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
  A gm[E] = {};
  if (valid[c * p.v_sk]) {
    const T* __restrict__ S = static_cast<const T*>(p.S) + i * p.S_sn;
    A m[E] = {};
    for (int64_t y = y0; y < y0 + b; ++y) {
      for (int64_t x = x0; x < x0 + b; ++x) {
        A cell[E];
        load_run<E>(S + y * p.S_sy + x * p.S_sx, p.S_sd, j0, p.d, vec, cell);
#pragma unroll
        for (int e = 0; e < E; ++e) m[e] += cell[e];
      }
    }
    A tv[E];
    load_run<E>(static_cast<const T*>(p.t) + i * p.t_sn + c * p.t_sk, p.t_sd, j0, p.d, vec, tv);
#pragma unroll
    for (int e = 0; e < E; ++e) gm[e] = block_mse_grad_m(g_scale, m[e] * inv_area, tv[e]);
  }
  const bool vec_out = vec && p.d % kVec<T> == 0;
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
    const bool t_ok = p.dt == nullptr || (p.t_sd == 1 && vector_ok<scalar_t>(p.t, p.t_sk, v) && p.t_sn % v == 0);
    const bool vec = p.s_sd == 1 && vector_ok<scalar_t>(p.s, p.s_sn, v) && t_ok;
    const dim3 grid(static_cast<unsigned>(p.n), static_cast<unsigned>(cuda_align_tiles(p.d)));
    child_mse_bwd_kernel<scalar_t>
        <<<grid, static_cast<unsigned>(kCudaAlignThreads), 0, static_cast<cudaStream_t>(stream)>>>(p, vec);
  });
  check_launch("child_mse backward");
}

void block_mse_bwd_cuda(const BlockMseParams& p, void* stream) {
  if (p.n == 0) return;
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "block_mse", [&] {
    constexpr int64_t v = kVec<scalar_t>;
    const bool vec = p.S_sd == 1 && p.t_sd == 1 && vector_ok<scalar_t>(p.S, p.S_sx, v) &&
                     p.S_sy % v == 0 && p.S_sn % v == 0 && vector_ok<scalar_t>(p.t, p.t_sk, v) &&
                     p.t_sn % v == 0;
    const dim3 grid(static_cast<unsigned>(p.n), static_cast<unsigned>(p.r * p.r * cuda_align_tiles(p.d)));
    block_mse_bwd_kernel<scalar_t>
        <<<grid, static_cast<unsigned>(kCudaAlignThreads), 0, static_cast<cudaStream_t>(stream)>>>(p, vec);
  });
  check_launch("block_mse backward");
}

}  // namespace lrmil
