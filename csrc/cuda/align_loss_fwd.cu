// CUDA forward kernels of the alignment loss (math in lrmil/align_loss.h). Grids of (row,
// feature tile) for child_mse and (row, child x feature tile) for block_mse, so that stage 1's
// 64-row batches still fill the GPU; each thread owns kCudaAlignRun consecutive features (16-byte
// loads when D is unit-stride and aligned). Partial losses per tile go to scratch and are added
// per row in tile order: deterministic.
#include "common.cuh"
#include "lrmil/align_loss.h"

namespace lrmil {
namespace {

using namespace cuda;
constexpr int E = static_cast<int>(kCudaAlignRun);

// Sum over the warp (the block is one warp), valid in lane 0.
template <typename A> __device__ __forceinline__ A tile_sum(A v) { return warp_sum(v); }

template <typename T>
__global__ void child_mse_fwd_kernel(ChildMseParams p, bool vec) {
  using A = acc_t<T>;
  const int64_t i = blockIdx.x, tiles = gridDim.y;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kCudaAlignTile + threadIdx.x * E;
  const T* __restrict__ s = static_cast<const T*>(p.s) + i * p.s_sn;
  const T* __restrict__ t = static_cast<const T*>(p.t) + i * p.t_sn;
  const A* __restrict__ w = static_cast<const A*>(p.w) + i * p.w_sn;
  const A total = weight_sum(w, p.k, p.w_sk);
  const A inv_total = total > A(0) ? A(1) / total : A(0);
  A err = 0, mean[E] = {};
  if (inv_total != A(0) && j0 < p.d) {
    A sv[E];
    load_run<E>(s, p.s_sd, j0, p.d, vec, sv);
    for (int64_t c = 0; c < p.k; ++c) {
      const A wk = w[c * p.w_sk];
      if (wk == A(0)) continue;  // children of weight 0 are never read
      A tv[E];
      load_run<E>(t + c * p.t_sk, p.t_sd, j0, p.d, vec, tv);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        if (j0 + e < p.d) err += wk * sq(tv[e] - sv[e]);
        mean[e] += wk * tv[e];
      }
    }
  }
  if (p.resid != nullptr && j0 < p.d) {  // s - tbar, all the backward needs for ds
    A sv[E];
    load_run<E>(s, p.s_sd, j0, p.d, vec, sv);
    A* res = static_cast<A*>(p.resid) + i * p.d;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if (j0 + e < p.d) res[j0 + e] = inv_total != A(0) ? sv[e] - mean[e] * inv_total : A(0);
    }
  }
  err = tile_sum(err);
  if (threadIdx.x == 0) static_cast<A*>(p.partial)[i * tiles + blockIdx.y] = err;
}

// One block per (row, child, tile): the child's block mean of S for the thread's features.
template <typename T>
__global__ void block_mse_fwd_kernel(BlockMseParams p, bool vec) {
  using A = acc_t<T>;
  const int64_t k = p.r * p.r, b = p.g / p.r, tiles = cuda_align_tiles(p.d);
  const int64_t i = blockIdx.x, c = blockIdx.y / tiles, tile = blockIdx.y % tiles;
  const int64_t j0 = tile * kCudaAlignTile + threadIdx.x * E;
  const uint8_t* valid = p.valid + i * p.v_sn;
  A err = 0, diff[E] = {};  // diff: the residual m - t, 0 for an invalid child
  if (valid[c * p.v_sk] && j0 < p.d) {
    const T* __restrict__ S = static_cast<const T*>(p.S) + i * p.S_sn;
    int64_t y0, x0;
    child_block_origin(c, p.r, b, &y0, &x0);
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
    const A inv_area = A(1) / A(b * b);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      diff[e] = m[e] * inv_area - tv[e];
      if (j0 + e < p.d) err += sq(diff[e]);
    }
  }
  if (p.resid != nullptr && j0 < p.d) {  // all the backward needs
    A* res = static_cast<A*>(p.resid) + (i * k + c) * p.d;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if (j0 + e < p.d) res[j0 + e] = diff[e];
    }
  }
  err = tile_sum(err);
  if (threadIdx.x == 0) static_cast<A*>(p.partial)[(i * k + c) * tiles + tile] = err;
}

// loss[i] = scale(i) * the row's partials in order (a thread per row).
template <typename A>
__global__ void child_mse_reduce_kernel(ChildMseParams p, int64_t tiles) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= p.n) return;
  const A* part = static_cast<const A*>(p.partial) + i * tiles;
  A total = 0;
  for (int64_t q = 0; q < tiles; ++q) total += part[q];
  const A* w = static_cast<const A*>(p.w) + i * p.w_sn;
  static_cast<A*>(p.loss)[i] = child_mse_scale(weight_sum(w, p.k, p.w_sk), p.d) * total;
}

template <typename A>
__global__ void block_mse_reduce_kernel(BlockMseParams p, int64_t per_row) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= p.n) return;
  const A* part = static_cast<const A*>(p.partial) + i * per_row;
  A total = 0;
  for (int64_t q = 0; q < per_row; ++q) total += part[q];
  const int64_t k = p.r * p.r;
  static_cast<A*>(p.loss)[i] = block_mse_scale<A>(count_valid(p.valid + i * p.v_sn, k, p.v_sk), p.d) * total;
}

constexpr int kReduceThreads = 256;

}  // namespace

void child_mse_fwd_cuda(const ChildMseParams& p, void* stream) {
  if (p.n == 0) return;
  const auto st = static_cast<cudaStream_t>(stream);
  const int64_t tiles = cuda_align_tiles(p.d);
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "child_mse", [&] {
    const bool vec = p.s_sd == 1 && p.t_sd == 1 && vector_ok<scalar_t>(p.s, p.s_sn, kVec<scalar_t>) &&
                     vector_ok<scalar_t>(p.t, p.t_sk, kVec<scalar_t>) && p.t_sn % kVec<scalar_t> == 0;
    const dim3 grid(static_cast<unsigned>(p.n), static_cast<unsigned>(tiles));
    child_mse_fwd_kernel<scalar_t><<<grid, static_cast<unsigned>(kCudaAlignThreads), 0, st>>>(p, vec);
    check_launch("child_mse forward");
    child_mse_reduce_kernel<acc_t<scalar_t>><<<blocks_for(p.n, kReduceThreads), kReduceThreads, 0, st>>>(p, tiles);
    check_launch("child_mse forward reduction");
  });
}

void block_mse_fwd_cuda(const BlockMseParams& p, void* stream) {
  if (p.n == 0) return;
  const auto st = static_cast<cudaStream_t>(stream);
  const int64_t tiles = cuda_align_tiles(p.d), k = p.r * p.r;
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "block_mse", [&] {
    constexpr int64_t v = kVec<scalar_t>;
    const bool vec = p.S_sd == 1 && p.t_sd == 1 && vector_ok<scalar_t>(p.S, p.S_sx, v) &&
                     p.S_sy % v == 0 && p.S_sn % v == 0 && vector_ok<scalar_t>(p.t, p.t_sk, v) &&
                     p.t_sn % v == 0;
    const dim3 grid(static_cast<unsigned>(p.n), static_cast<unsigned>(k * tiles));
    block_mse_fwd_kernel<scalar_t><<<grid, static_cast<unsigned>(kCudaAlignThreads), 0, st>>>(p, vec);
    check_launch("block_mse forward");
    block_mse_reduce_kernel<acc_t<scalar_t>><<<blocks_for(p.n, kReduceThreads), kReduceThreads, 0, st>>>(p, k * tiles);
    check_launch("block_mse forward reduction");
  });
}

}  // namespace lrmil
