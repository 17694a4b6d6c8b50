// Gated attention pooling backward on CUDA. (1) a warp per row: d/d attn (grad_pooled . x plus
// grad_attn) and grad_x; (2) a block per bag: softmax backward, giving d/d logit; (3) a warp per
// row recomputes the gate and writes grad_proj, each block sums its rows' grad_w / grad_b_w in
// shared memory; (4) one block adds the block partials in order. Only O(T) scalars and
// O(blocks * L) partials are kept, in stream-ordered allocations; every sum has a fixed order.
#include "attention_pool_cuda.cuh"

namespace lrmil {
namespace {

using namespace attention_pool_cuda;

constexpr int64_t kRowsPerGateBlock = 256;

template <typename S>
__global__ void attn_grad_kernel(AttentionPoolParams p, acc_t<S>* grad_a) {
  using A = acc_t<S>;
  const S* x = static_cast<const S*>(p.x);
  const S* gp = static_cast<const S*>(p.grad_pooled);
  const A* attn = static_cast<const A*>(p.attn);
  const A* grad_attn = static_cast<const A*>(p.grad_attn);
  S* grad_x = static_cast<S*>(p.grad_x);
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t t = blockIdx.x * kWarps + threadIdx.x / kWarp; t < p.n_rows; t += warps) {
    const S* g = gp + bag_of_row(p.offsets, p.n_bags, t) * p.grad_pooled_row_stride;
    const S* row = x + t * p.x_row_stride;
    S* gx = grad_x ? grad_x + t * p.dim : nullptr;  // null: x needs no gradient
    const A a = attn[t];
    A dot = 0;
    for (int64_t j = lane; j < p.dim; j += kWarp) {
      const A gj = load(g + j);
      dot += gj * load(row + j);
      if (grad_x) store(gx + j, a * gj);
    }
    dot = warp_sum(dot);
    if (lane == 0) grad_a[t] = dot + (grad_attn ? grad_attn[t] : A(0));
  }
}

template <typename A>
__global__ void softmax_backward_kernel(AttentionPoolParams p, A* grad) {
  __shared__ A smem[kWarps];
  const int64_t b = blockIdx.x;
  const int64_t start = p.offsets[b], end = p.offsets[b + 1];
  const A* attn = static_cast<const A*>(p.attn);
  const A* grad_logits = static_cast<const A*>(p.grad_logits);
  A s = 0;
  for (int64_t t = start + threadIdx.x; t < end; t += blockDim.x) s += attn[t] * grad[t];
  const A weighted = block_reduce<A, false>(s, smem);
  for (int64_t t = start + threadIdx.x; t < end; t += blockDim.x) {
    grad[t] = attn[t] * (grad[t] - weighted) + (grad_logits ? grad_logits[t] : A(0));
  }
}

// Dynamic shared memory: kWarps rows of L + 1 partial sums (grad_w, then grad_b_w).
template <typename S>
__global__ void gate_backward_kernel(AttentionPoolParams p, const acc_t<S>* grad_logit,
                                     acc_t<S>* block_partial) {
  using A = acc_t<S>;
  extern __shared__ unsigned char smem_raw[];
  A* acc = reinterpret_cast<A*>(smem_raw);
  const int64_t L = p.hidden;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  A* mine = acc + warp * (L + 1);
  for (int64_t l = lane; l <= L; l += kWarp) mine[l] = 0;
  __syncwarp();  // mine[L] is zeroed by lane L % 32 but accumulated by lane 0
  const S* proj = static_cast<const S*>(p.proj);
  const A* w = static_cast<const A*>(p.w);
  S* grad_proj = static_cast<S*>(p.grad_proj);
  const int64_t first = blockIdx.x * kRowsPerGateBlock;
  const int64_t last = first + kRowsPerGateBlock < p.n_rows ? first + kRowsPerGateBlock : p.n_rows;
  for (int64_t t = first + warp; t < last; t += kWarps) {
    const A de = grad_logit[t];
    const S* v = proj + t * p.proj_row_stride;
    const S* u = v + L;
    S* gv = grad_proj + t * 2 * L;
    for (int64_t l = lane; l < L; l += kWarp) {
      const GateGrad<A> g = gate_term_grad(load(v + l), load(u + l), w[l], de);
      store(gv + l, g.dv);
      store(gv + L + l, g.du);
      mine[l] += de * g.gate;
    }
    if (lane == 0) mine[L] += de;
  }
  __syncthreads();
  for (int64_t l = threadIdx.x; l <= L; l += blockDim.x) {
    A s = 0;
    for (int i = 0; i < kWarps; ++i) s += acc[i * (L + 1) + l];
    block_partial[blockIdx.x * (L + 1) + l] = s;
  }
}

template <typename A>
__global__ void sum_partials_kernel(AttentionPoolParams p, const A* block_partial, int blocks) {
  const int64_t L = p.hidden;
  for (int64_t l = threadIdx.x; l <= L; l += blockDim.x) {
    A s = 0;
    for (int i = 0; i < blocks; ++i) s += block_partial[i * (L + 1) + l];
    if (l < L) static_cast<A*>(p.grad_w)[l] = s;
    else *static_cast<A*>(p.grad_b_w) = s;
  }
}

template <typename S>
void backward(const AttentionPoolParams& p, cudaStream_t stream) {
  using A = acc_t<S>;
  const int64_t L = p.hidden;
  const int gate_blocks = static_cast<int>((p.n_rows + kRowsPerGateBlock - 1) / kRowsPerGateBlock);
  void* grad = nullptr;
  void* partial = nullptr;
  check(cudaMallocAsync(&grad, sizeof(A) * (p.n_rows > 0 ? p.n_rows : 1), stream), "workspace");
  check(cudaMallocAsync(&partial, sizeof(A) * (L + 1) * (gate_blocks > 0 ? gate_blocks : 1), stream),
        "workspace");
  A* g = static_cast<A*>(grad);
  if (p.n_rows > 0) {
    attn_grad_kernel<S><<<blocks_for(p.n_rows, kWarps), kThreads, 0, stream>>>(p, g);
    check(cudaGetLastError(), "attention gradient kernel");
    softmax_backward_kernel<A><<<static_cast<unsigned>(p.n_bags), kThreads, 0, stream>>>(p, g);
    check(cudaGetLastError(), "softmax backward kernel");
    const size_t smem = sizeof(A) * kWarps * (L + 1);
    if (smem > 48 * 1024) {
      check(cudaFuncSetAttribute(gate_backward_kernel<S>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
            "shared memory for the hidden size");
    }
    gate_backward_kernel<S><<<gate_blocks, kThreads, smem, stream>>>(p, g, static_cast<A*>(partial));
    check(cudaGetLastError(), "gate backward kernel");
  }
  sum_partials_kernel<A><<<1, kThreads, 0, stream>>>(p, static_cast<A*>(partial), gate_blocks);
  check(cudaGetLastError(), "grad_w reduction kernel");
  check(cudaFreeAsync(grad, stream), "workspace");
  check(cudaFreeAsync(partial, stream), "workspace");
}

}  // namespace

void attention_pool_backward_cuda(const AttentionPoolParams& p, int device, void* stream) {
  check(cudaSetDevice(device), "cudaSetDevice");
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "attention_pool_backward_cuda",
                             [&] { backward<scalar_t>(p, static_cast<cudaStream_t>(stream)); });
}

}  // namespace lrmil
