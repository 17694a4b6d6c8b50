// Gated attention pooling forward on CUDA: logits (a warp per row), the per-bag softmax (a
// block per bag) and the pooling (a block per bag and 32 columns, 8 row phases reduced in a
// fixed order, so results are deterministic). proj and x are read once.
#include "attention_pool_cuda.cuh"

namespace lrmil {
namespace {

using namespace attention_pool_cuda;

template <typename S>
__global__ void logits_kernel(AttentionPoolParams p) {
  using A = acc_t<S>;
  const S* proj = static_cast<const S*>(p.proj);
  const A* w = static_cast<const A*>(p.w);
  const A b_w = *static_cast<const A*>(p.b_w);
  A* logits = static_cast<A*>(p.logits);
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t t = blockIdx.x * kWarps + threadIdx.x / kWarp; t < p.n_rows; t += warps) {
    const S* v = proj + t * p.proj_row_stride;
    const S* u = v + p.hidden;
    A e = 0;
    for (int64_t l = lane; l < p.hidden; l += kWarp) e += gate_term(load(v + l), load(u + l), w[l]);
    e = warp_sum(e);
    if (lane == 0) logits[t] = e + b_w;
  }
}

template <typename A>
__global__ void softmax_kernel(AttentionPoolParams p) {
  __shared__ A smem[kWarps];
  const int64_t b = blockIdx.x;
  const int64_t start = p.offsets[b], end = p.offsets[b + 1];
  const A* logits = static_cast<const A*>(p.logits);
  A* attn = static_cast<A*>(p.attn);
  A m = -INFINITY;
  for (int64_t t = start + threadIdx.x; t < end; t += blockDim.x) m = fmax(m, logits[t]);
  const A shift = softmax_shift(block_reduce<A, true>(m, smem));
  A s = 0;
  for (int64_t t = start + threadIdx.x; t < end; t += blockDim.x) {
    const A a = exp(logits[t] - shift);
    attn[t] = a;
    s += a;
  }
  const A inv = safe_inverse(block_reduce<A, false>(s, smem));
  for (int64_t t = start + threadIdx.x; t < end; t += blockDim.x) attn[t] *= inv;
}

template <typename S>
__global__ void pool_kernel(AttentionPoolParams p) {
  using A = acc_t<S>;
  __shared__ A partial[kWarps][kWarp];
  const int64_t b = blockIdx.x;
  const int64_t col = static_cast<int64_t>(blockIdx.y) * kWarp + threadIdx.x;
  const S* x = static_cast<const S*>(p.x);
  const A* attn = static_cast<const A*>(p.attn);
  A acc = 0;
  if (col < p.dim) {
    for (int64_t t = p.offsets[b] + threadIdx.y; t < p.offsets[b + 1]; t += kWarps) {
      acc += attn[t] * load(x + t * p.x_row_stride + col);
    }
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < p.dim) {
    for (int i = 1; i < kWarps; ++i) acc += partial[i][threadIdx.x];
    store(static_cast<S*>(p.pooled) + b * p.dim + col, acc);
  }
}

template <typename S>
void forward(const AttentionPoolParams& p, cudaStream_t stream) {
  using A = acc_t<S>;
  if (p.n_bags == 0) return;
  if (p.n_rows > 0) {
    logits_kernel<S><<<blocks_for(p.n_rows, kWarps), kThreads, 0, stream>>>(p);
    check(cudaGetLastError(), "logits kernel");
  }
  softmax_kernel<A><<<static_cast<unsigned>(p.n_bags), kThreads, 0, stream>>>(p);
  check(cudaGetLastError(), "softmax kernel");
  const dim3 grid(static_cast<unsigned>(p.n_bags), static_cast<unsigned>((p.dim + kWarp - 1) / kWarp));
  pool_kernel<S><<<grid, dim3(kWarp, kWarps), 0, stream>>>(p);
  check(cudaGetLastError(), "pooling kernel");
}

}  // namespace

void attention_pool_forward_cuda(const AttentionPoolParams& p, int device, void* stream) {
  check(cudaSetDevice(device), "cudaSetDevice");
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "attention_pool_forward_cuda",
                             [&] { forward<scalar_t>(p, static_cast<cudaStream_t>(stream)); });
}

}  // namespace lrmil
