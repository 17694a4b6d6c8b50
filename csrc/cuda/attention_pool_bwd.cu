// Gated attention pooling backward on CUDA, on the forward's chunks (attention_pool_chunks.cuh):
//   1. per chunk, a warp per row: d/d attn_t = grad_pooled[bag] . x_t (+ grad_attn_t), 16-byte
//      loads, grad_x_t = attn_t grad_pooled[bag]; and the chunk's sum of attn_t d/d attn_t.
//   2. per bag: its chunks' sums added in chunk order (a thread per bag).
//   3. per chunk: d/d logit_t = attn_t (d/d attn_t - the bag's sum) (+ grad_logits_t).
//   4. per (row block, hidden tile), a thread per hidden unit: the gate recomputed from proj,
//      grad_proj written (coalesced along the hidden units; no shared memory, so any hidden
//      size), and the block's partial sums of grad_w and grad_b_w.
//   5. per hidden unit: the row blocks' partials added in order.
// Scratch comes from torch's allocator (Python passes it); every sum has a fixed order. grad_proj
// may alias proj (the training layer's in-place backward): each element of proj is read by the
// thread that then overwrites it, so proj and grad_proj are not __restrict__.
#include "attention_pool_chunks.cuh"

namespace lrmil {
namespace {

using namespace cuda;
using namespace attention_pool_cuda;

template <typename A> struct Scratch {
  A* chunk_dot;   // (max_chunks,)
  A* bag_dot;     // (B,)
  A* partial;     // (gate_blocks, L + 1)
  A* grad_logit;  // (T,): d/d attn, then d/d logit
};

template <typename A> Scratch<A> scratch_of(const AttentionPoolParams& p, const CudaPoolLayout& l) {
  char* ws = static_cast<char*>(p.workspace);
  return {reinterpret_cast<A*>(ws + l.chunk_stats), reinterpret_cast<A*>(ws + l.bag_stats),
          reinterpret_cast<A*>(ws + l.partial), reinterpret_cast<A*>(ws + l.grad_logit)};
}

template <typename S, int V>
__global__ void attn_grad_kernel(AttentionPoolParams p, Scratch<acc_t<S>> sc) {
  using A = acc_t<S>;
  __shared__ A smem[kWarps];
  const Chunk ch = chunk_at(p, blockIdx.x);
  if (ch.bag < 0) return;
  const S* __restrict__ x = static_cast<const S*>(p.x);
  const S* __restrict__ g = static_cast<const S*>(p.grad_pooled) + ch.bag * p.grad_pooled_row_stride;
  const A* __restrict__ attn = static_cast<const A*>(p.attn);
  const A* __restrict__ grad_attn = static_cast<const A*>(p.grad_attn);
  S* __restrict__ grad_x = static_cast<S*>(p.grad_x);
  const int lane = threadIdx.x % kWarp;
  A weighted = 0;  // this warp's sum of attn_t d/d attn_t (lane 0)
  for (int64_t t = ch.start + threadIdx.x / kWarp; t < ch.end; t += kWarps) {
    const A a = attn[t];
    const S* row = x + t * p.x_row_stride;
    A dot = 0;
    for (int64_t j = int64_t(lane) * V; j < p.dim; j += int64_t(kWarp) * V) {
      A gv[V], xv[V];
      load_vec<S, V>(g + j, gv);
      load_vec<S, V>(row + j, xv);
#pragma unroll
      for (int i = 0; i < V; ++i) dot += gv[i] * xv[i];
      if (grad_x) {
        A gx[V];
#pragma unroll
        for (int i = 0; i < V; ++i) gx[i] = a * gv[i];
        store_vec<S, V>(grad_x + t * p.dim + j, gx);
      }
    }
    dot = warp_sum(dot) + (grad_attn ? grad_attn[t] : A(0));
    if (lane == 0) {
      sc.grad_logit[t] = dot;
      weighted += a * dot;
    }
  }
  weighted = block_reduce<A, false>(lane == 0 ? weighted : A(0), smem);
  if (threadIdx.x == 0) sc.chunk_dot[blockIdx.x] = weighted;
}

template <typename A>
__global__ void bag_dot_kernel(AttentionPoolParams p, Scratch<A> sc) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= p.n_bags) return;
  A s = 0;
  for (int64_t c = p.plan[b]; c < p.plan[b + 1]; ++c) s += sc.chunk_dot[c];
  sc.bag_dot[b] = s;
}

template <typename A>
__global__ void softmax_backward_kernel(AttentionPoolParams p, Scratch<A> sc) {
  const Chunk ch = chunk_at(p, blockIdx.x);
  if (ch.bag < 0) return;
  const A* __restrict__ attn = static_cast<const A*>(p.attn);
  const A* __restrict__ grad_logits = static_cast<const A*>(p.grad_logits);
  const A weighted = sc.bag_dot[ch.bag];
  for (int64_t t = ch.start + threadIdx.x; t < ch.end; t += blockDim.x) {
    sc.grad_logit[t] = attn[t] * (sc.grad_logit[t] - weighted) + (grad_logits ? grad_logits[t] : A(0));
  }
}

// Grid (row blocks of kCudaGateRows, hidden tiles of kCudaHiddenTile), kCudaHiddenTile threads.
template <typename S>
__global__ void gate_backward_kernel(AttentionPoolParams p, Scratch<acc_t<S>> sc) {
  using A = acc_t<S>;
  const int64_t L = p.hidden;
  const int64_t l = static_cast<int64_t>(blockIdx.y) * kCudaHiddenTile + threadIdx.x;
  const bool bias_lane = blockIdx.y == 0 && threadIdx.x == 0;
  const S* proj = static_cast<const S*>(p.proj);
  S* grad_proj = static_cast<S*>(p.grad_proj);
  const A wl = l < L ? static_cast<const A*>(p.w)[l] : A(0);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kCudaGateRows;
  const int64_t last = first + kCudaGateRows < p.n_rows ? first + kCudaGateRows : p.n_rows;
  A gw = 0, gb = 0;
  for (int64_t t = first; t < last; ++t) {
    const A de = sc.grad_logit[t];
    if (bias_lane) gb += de;
    if (l >= L) continue;
    const S* v = proj + t * p.proj_row_stride;
    const GateGrad<A> g = gate_term_grad(A(load(v + l)), A(load(v + L + l)), wl, de);
    S* gv = grad_proj + t * 2 * L;
    store(gv + l, g.dv);
    store(gv + L + l, g.du);
    gw += de * g.gate;
  }
  A* out = sc.partial + static_cast<int64_t>(blockIdx.x) * (L + 1);
  if (l < L) out[l] = gw;
  if (bias_lane) out[L] = gb;
}

template <typename A>
__global__ void sum_partials_kernel(AttentionPoolParams p, Scratch<A> sc, int64_t blocks) {
  const int64_t L = p.hidden;
  const int64_t l = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (l > L) return;
  A s = 0;
  for (int64_t i = 0; i < blocks; ++i) s += sc.partial[i * (L + 1) + l];
  if (l < L) static_cast<A*>(p.grad_w)[l] = s;
  else *static_cast<A*>(p.grad_b_w) = s;
}

template <typename S>
void backward(const AttentionPoolParams& p, cudaStream_t stream) {
  using A = acc_t<S>;
  const CudaPoolLayout l = cuda_pool_layout(p.n_rows, p.n_bags, p.hidden, p.dim, sizeof(A), true);
  const Scratch<A> sc = scratch_of<A>(p, l);
  if (p.n_rows > 0) {
    const unsigned chunks = static_cast<unsigned>(l.max_chunks);
    const bool vec = vector_ok<S>(p.x, p.x_row_stride, p.dim) &&
                     vector_ok<S>(p.grad_pooled, p.grad_pooled_row_stride, p.dim);
    if (vec) {
      attn_grad_kernel<S, kVec<S>><<<chunks, kThreads, 0, stream>>>(p, sc);
    } else {
      attn_grad_kernel<S, 1><<<chunks, kThreads, 0, stream>>>(p, sc);
    }
    check_launch("attention pooling backward: attention gradient kernel");
    bag_dot_kernel<A><<<blocks_for(p.n_bags, kThreads), kThreads, 0, stream>>>(p, sc);
    check_launch("attention pooling backward: bag sum kernel");
    softmax_backward_kernel<A><<<chunks, kThreads, 0, stream>>>(p, sc);
    check_launch("attention pooling backward: softmax backward kernel");
    const dim3 grid(static_cast<unsigned>(l.gate_blocks), static_cast<unsigned>(l.hidden_tiles));
    gate_backward_kernel<S><<<grid, static_cast<unsigned>(kCudaHiddenTile), 0, stream>>>(p, sc);
    check_launch("attention pooling backward: gate backward kernel");
  }
  sum_partials_kernel<A><<<blocks_for(p.hidden + 1, kThreads), kThreads, 0, stream>>>(p, sc, l.gate_blocks);
  check_launch("attention pooling backward: grad_w reduction kernel");
}

}  // namespace

void attention_pool_backward_cuda(const AttentionPoolParams& p, void* stream) {
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "attention_pool_backward_cuda",
                             [&] { backward<scalar_t>(p, static_cast<cudaStream_t>(stream)); });
}

}  // namespace lrmil
