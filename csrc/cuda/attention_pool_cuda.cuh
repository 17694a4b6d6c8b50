// Helpers the attention pooling CUDA kernels share (forward and backward files).
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "lrmil/attention_pool.h"

namespace lrmil {
namespace attention_pool_cuda {

constexpr int kWarp = 32;
constexpr int kWarps = 8;  // warps per block
constexpr int kThreads = kWarp * kWarps;

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("attention_pool (CUDA): ") + what + ": " +
                             cudaGetErrorString(err));
  }
}

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename A> __device__ __forceinline__ A warp_max(A v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reductions in a fixed order (deterministic); every thread gets the result.
template <typename A, bool kMax> __device__ A block_reduce(A v, A* smem /* kWarps */) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = kMax ? warp_max(v) : warp_sum(v);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  A r = smem[0];
  for (int i = 1; i < kWarps; ++i) r = kMax ? fmax(r, smem[i]) : r + smem[i];
  __syncthreads();  // smem may be reused right after
  return r;
}

inline int blocks_for(int64_t n, int64_t per_block) {
  const int64_t b = (n + per_block - 1) / per_block;
  return static_cast<int>(b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b));
}

}  // namespace attention_pool_cuda
}  // namespace lrmil
