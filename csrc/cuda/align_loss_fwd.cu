// CUDA forward kernels of the alignment loss (math in lrmil/align_loss.h). One block per row,
// threads over features (coalesced when D is contiguous), a fixed-order block reduction for the
// row loss, so results are deterministic.
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

// Sum of v over the block, valid in thread 0.
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A warp_sums[kMaxThreads / 32];
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  A total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < (int)(blockDim.x / 32); ++w) total += warp_sums[w];
  }
  return total;
}

template <typename T>
__global__ void child_mse_fwd_kernel(ChildMseParams p) {
  using A = acc_t<T>;
  const int64_t i = blockIdx.x;
  const T* s = static_cast<const T*>(p.s) + i * p.s_sn;
  const T* t = static_cast<const T*>(p.t) + i * p.t_sn;
  const A* w = static_cast<const A*>(p.w) + i * p.w_sn;
  A* tbar = p.tbar == nullptr ? nullptr : static_cast<A*>(p.tbar) + i * p.d;
  const A total = weight_sum(w, p.k, p.w_sk);
  const A inv_total = total > A(0) ? A(1) / total : A(0);
  A err = 0;
  for (int64_t d = threadIdx.x; d < p.d; d += blockDim.x) {
    A mean = 0;
    if (inv_total != A(0)) {
      const A sv = load(s + d * p.s_sd);
      for (int64_t c = 0; c < p.k; ++c) {
        const A wk = w[c * p.w_sk];
        if (wk == A(0)) continue;
        const A tv = load(t + c * p.t_sk + d * p.t_sd);
        err += wk * sq(tv - sv);
        mean += wk * tv;
      }
    }
    if (tbar != nullptr) tbar[d] = mean * inv_total;
  }
  err = block_sum(err);
  if (threadIdx.x == 0) static_cast<A*>(p.loss)[i] = child_mse_scale(total, p.d) * err;
}

template <typename T>
__global__ void block_mse_fwd_kernel(BlockMseParams p) {
  using A = acc_t<T>;
  const int64_t i = blockIdx.x, k = p.r * p.r, b = p.g / p.r;
  const T* S = static_cast<const T*>(p.S) + i * p.S_sn;
  const T* t = static_cast<const T*>(p.t) + i * p.t_sn;
  const uint8_t* valid = p.valid + i * p.v_sn;
  const A inv_area = A(1) / A(b * b);
  A err = 0;
  for (int64_t d = threadIdx.x; d < p.d; d += blockDim.x) {
    for (int64_t c = 0; c < k; ++c) {
      if (!valid[c * p.v_sk]) continue;
      int64_t y0, x0;
      child_block_origin(c, p.r, b, &y0, &x0);
      A m = 0;
      for (int64_t y = y0; y < y0 + b; ++y)
        for (int64_t x = x0; x < x0 + b; ++x) m += load(S + y * p.S_sy + x * p.S_sx + d * p.S_sd);
      err += sq(m * inv_area - A(load(t + c * p.t_sk + d * p.t_sd)));
    }
  }
  err = block_sum(err);
  if (threadIdx.x == 0) {
    static_cast<A*>(p.loss)[i] = block_mse_scale<A>(count_valid(valid, k, p.v_sk), p.d) * err;
  }
}

}  // namespace

void child_mse_fwd_cuda(const ChildMseParams& p, void* stream) {
  if (p.n == 0) return;
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "child_mse", [&] {
    child_mse_fwd_kernel<scalar_t>
        <<<(unsigned)p.n, threads_for(p.d), 0, static_cast<cudaStream_t>(stream)>>>(p);
  });
  check_launch("child_mse_fwd");
}

void block_mse_fwd_cuda(const BlockMseParams& p, void* stream) {
  if (p.n == 0) return;
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "block_mse", [&] {
    block_mse_fwd_kernel<scalar_t>
        <<<(unsigned)p.n, threads_for(p.d), 0, static_cast<cudaStream_t>(stream)>>>(p);
  });
  check_launch("block_mse_fwd");
}

}  // namespace lrmil
