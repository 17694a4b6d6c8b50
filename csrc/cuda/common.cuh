// Helpers every CUDA kernel file shares: error checks, fixed-order (deterministic) warp and block
// reductions, grid sizing, and 16-byte vector loads / stores of the storage types.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "lrmil/common.h"

namespace lrmil {
namespace cuda {

constexpr int kWarp = 32;

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + " (CUDA): " + cudaGetErrorString(err));
  }
}

// After a launch: a bad configuration (grid too large, too much shared memory) shows here.
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

// Blocks for n items of per_block each; grid-stride loops cover the rest beyond `cap`.
inline unsigned blocks_for(int64_t n, int64_t per_block, int64_t cap = int64_t(1) << 20) {
  const int64_t b = (n + per_block - 1) / per_block;
  return static_cast<unsigned>(b < 1 ? 1 : (b > cap ? cap : b));
}

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// fmax drops NaN; a NaN logit is handled later by the NaN-propagating exp and sum.
template <typename A> __device__ __forceinline__ A warp_max(A v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum or max in a fixed order; every thread gets the result. smem: blockDim.x / 32
// slots of A; blockDim.x must be a multiple of 32.
template <typename A, bool kMax> __device__ A block_reduce(A v, A* smem) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  v = kMax ? warp_max(v) : warp_sum(v);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  A r = smem[0];
  for (int i = 1; i < warps; ++i) r = kMax ? fmax(r, smem[i]) : r + smem[i];
  __syncthreads();  // smem may be reused right after
  return r;
}

// ---- vector access: kVec<S> elements of storage type S in one 16-byte transaction ----

template <typename S> constexpr int kVec = 16 / sizeof(S);

template <typename S> struct alignas(16) Vec { S v[kVec<S>]; };

// Whether rows of `cols` elements, `row_stride` apart from `base`, can be read kVec at a time.
template <typename S>
inline bool vector_ok(const void* base, int64_t row_stride, int64_t cols) {
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && row_stride % kVec<S> == 0 &&
         cols % kVec<S> == 0;
}

template <typename S, int V>
__device__ __forceinline__ void load_vec(const S* __restrict__ p, acc_t<S> (&out)[V]) {
  if constexpr (V == kVec<S>) {
    const Vec<S> raw = *reinterpret_cast<const Vec<S>*>(p);
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = load(&raw.v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = load(p + i);
  }
}

template <typename S, int V>
__device__ __forceinline__ void store_vec(S* __restrict__ p, const acc_t<S> (&in)[V]) {
  if constexpr (V == kVec<S>) {
    Vec<S> raw;
#pragma unroll
    for (int i = 0; i < V; ++i) store(&raw.v[i], in[i]);
    *reinterpret_cast<Vec<S>*>(p) = raw;
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) store(p + i, in[i]);
  }
}

// E elements j0..j0+E-1 of a row (element stride sd along it), in the accumulation type: as
// E / kVec 16-byte loads when `vec` (unit stride, 16-byte aligned, all E in range), else one by
// one, elements at or past `len` reading as 0.
template <int E, typename S>
__device__ __forceinline__ void load_run(const S* __restrict__ row, int64_t sd, int64_t j0,
                                         int64_t len, bool vec, acc_t<S> (&out)[E]) {
  static_assert(E % kVec<S> == 0, "whole vectors");
  if (vec && j0 + E <= len) {
#pragma unroll
    for (int q = 0; q < E / kVec<S>; ++q) {
      acc_t<S> part[kVec<S>];
      load_vec<S, kVec<S>>(row + j0 + q * kVec<S>, part);
#pragma unroll
      for (int i = 0; i < kVec<S>; ++i) out[q * kVec<S> + i] = part[i];
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < E; ++i) out[i] = j0 + i < len ? acc_t<S>(load(row + (j0 + i) * sd)) : acc_t<S>(0);
}

// The store of load_run to a contiguous row (elements at or past len are not written).
template <int E, typename S>
__device__ __forceinline__ void store_run(S* __restrict__ row, int64_t j0, int64_t len, bool vec,
                                          const acc_t<S> (&in)[E]) {
  if (vec && j0 + E <= len) {
#pragma unroll
    for (int q = 0; q < E / kVec<S>; ++q) {
      acc_t<S> part[kVec<S>];
#pragma unroll
      for (int i = 0; i < kVec<S>; ++i) part[i] = in[q * kVec<S> + i];
      store_vec<S, kVec<S>>(row + j0 + q * kVec<S>, part);
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < E; ++i) {
    if (j0 + i < len) store(row + j0 + i, in[i]);
  }
}

}  // namespace cuda
}  // namespace lrmil
