// Gated attention pooling forward on CUDA, flash-decoding style: bags are split into chunks of
// kCudaChunkRows rows (lrmil/attention_pool.h), so one long bag spreads over the whole GPU.
//   1. logits: a warp per row, 16-byte loads of proj.
//   2. per chunk: its max logit and sum of exp(logit - max) (a block per chunk).
//   3. per bag: the chunks' statistics combined in chunk order (a thread per bag).
//   4. per (chunk, column tile): attn of its rows and their weighted sum of x rows, 16-byte
//      loads; a one-chunk bag writes pooled, the chunks of a longer bag write partial sums.
//   5. per (bag, column tile): a long bag's partial sums added in chunk order.
// Every sum has an order fixed by the shapes: results are deterministic. proj and x are read
// once; the T logits three times.
#include "attention_pool_chunks.cuh"

namespace lrmil {
namespace {

using namespace cuda;
using namespace attention_pool_cuda;

template <typename A> struct Stats { A* chunk; A* bag; A* partial; };

template <typename A> Stats<A> stats_of(const AttentionPoolParams& p, const CudaPoolLayout& l) {
  char* ws = static_cast<char*>(p.workspace);
  return {reinterpret_cast<A*>(ws + l.chunk_stats), reinterpret_cast<A*>(ws + l.bag_stats),
          reinterpret_cast<A*>(ws + l.partial)};
}

template <typename S, int V>
__global__ void logits_kernel(AttentionPoolParams p) {
  using A = acc_t<S>;
  const S* __restrict__ proj = static_cast<const S*>(p.proj);
  const A* __restrict__ w = static_cast<const A*>(p.w);
  const A b_w = *static_cast<const A*>(p.b_w);
  A* __restrict__ logits = static_cast<A*>(p.logits);
  const int lane = threadIdx.x % kWarp;
  const int64_t L = p.hidden;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t t = blockIdx.x * int64_t(kWarps) + threadIdx.x / kWarp; t < p.n_rows; t += warps) {
    const S* v = proj + t * p.proj_row_stride;
    A e = 0;
    for (int64_t l = int64_t(lane) * V; l < L; l += int64_t(kWarp) * V) {
      A vv[V], uu[V];
      load_vec<S, V>(v + l, vv);
      load_vec<S, V>(v + L + l, uu);
#pragma unroll
      for (int i = 0; i < V; ++i) e += gate_term(vv[i], uu[i], w[l + i]);
    }
    e = warp_sum(e);
    if (lane == 0) logits[t] = e + b_w;
  }
}

// chunk[2c] = max logit of chunk c, chunk[2c + 1] = sum of exp(logit - shift(max)).
template <typename A>
__global__ void chunk_stats_kernel(AttentionPoolParams p, Stats<A> st) {
  __shared__ A smem[kWarps];
  const Chunk ch = chunk_at(p, blockIdx.x);
  if (ch.bag < 0) return;
  const A* __restrict__ logits = static_cast<const A*>(p.logits);
  A m = -INFINITY;
  for (int64_t t = ch.start + threadIdx.x; t < ch.end; t += blockDim.x) m = fmax(m, logits[t]);
  m = block_reduce<A, true>(m, smem);
  const A shift = softmax_shift(m);
  A s = 0;
  for (int64_t t = ch.start + threadIdx.x; t < ch.end; t += blockDim.x) s += exp(logits[t] - shift);
  s = block_reduce<A, false>(s, smem);
  if (threadIdx.x == 0) {
    const int64_t c = blockIdx.x;
    st.chunk[2 * c] = m;
    st.chunk[2 * c + 1] = s;
  }
}

// bag[2b] = the bag's softmax shift, bag[2b + 1] = 1 / its sum (0 for an empty bag).
template <typename A>
__global__ void bag_stats_kernel(AttentionPoolParams p, Stats<A> st) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= p.n_bags) return;
  const int64_t first = p.plan[b], last = p.plan[b + 1];
  A m = -INFINITY;
  for (int64_t c = first; c < last; ++c) m = fmax(m, st.chunk[2 * c]);
  const A shift = softmax_shift(m);
  A s = 0;
  for (int64_t c = first; c < last; ++c) {
    const A cm = st.chunk[2 * c], cs = st.chunk[2 * c + 1];
    s += cs == A(0) ? A(0) : cs * exp(softmax_shift(cm) - shift);
  }
  st.bag[2 * b] = shift;
  st.bag[2 * b + 1] = safe_inverse(s);
}

// Block (kWarp, kWarps): threadIdx.x covers V columns each of a tile of kWarp * V columns,
// threadIdx.y the rows of the chunk in kWarps phases, added in a fixed order at the end.
template <typename S, int V>
__global__ void pool_kernel(AttentionPoolParams p, Stats<acc_t<S>> st) {
  using A = acc_t<S>;
  __shared__ A partial[kWarps][kWarp * V];
  const Chunk ch = chunk_at(p, blockIdx.x);
  if (ch.bag < 0) return;
  const S* __restrict__ x = static_cast<const S*>(p.x);
  const A* __restrict__ logits = static_cast<const A*>(p.logits);
  A* __restrict__ attn = static_cast<A*>(p.attn);
  const A shift = st.bag[2 * ch.bag], inv = st.bag[2 * ch.bag + 1];
  const int64_t col = (static_cast<int64_t>(blockIdx.y) * kWarp + threadIdx.x) * V;
  const bool active = col < p.dim;
  A acc[V];
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] = 0;
  for (int64_t t = ch.start + threadIdx.y; t < ch.end; t += kWarps) {
    const A a = exp(logits[t] - shift) * inv;
    if (blockIdx.y == 0 && threadIdx.x == 0) attn[t] = a;
    if (!active) continue;
    A xv[V];
    load_vec<S, V>(x + t * p.x_row_stride + col, xv);
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] += a * xv[i];
  }
#pragma unroll
  for (int i = 0; i < V; ++i) partial[threadIdx.y][threadIdx.x * V + i] = acc[i];
  __syncthreads();
  if (threadIdx.y != 0 || !active) return;
  for (int r = 1; r < kWarps; ++r) {
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] += partial[r][threadIdx.x * V + i];
  }
  if (ch.single) {
    store_vec<S, V>(static_cast<S*>(p.pooled) + ch.bag * p.dim + col, acc);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) st.partial[ch.slot * p.dim + col + i] = acc[i];
  }
}

// Grid (bags, column tiles of kThreads): a bag of several chunks adds their partials in order.
template <typename S>
__global__ void combine_kernel(AttentionPoolParams p, Stats<acc_t<S>> st) {
  using A = acc_t<S>;
  const int64_t b = blockIdx.x;
  const int64_t* first_slot = p.plan + p.n_bags + 1;
  const int64_t first = first_slot[b], last = first_slot[b + 1];
  const int64_t col = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (first == last || col >= p.dim) return;
  A s = 0;
  for (int64_t slot = first; slot < last; ++slot) s += st.partial[slot * p.dim + col];
  store(static_cast<S*>(p.pooled) + b * p.dim + col, s);
}

template <typename S>
void forward(const AttentionPoolParams& p, cudaStream_t stream) {
  using A = acc_t<S>;
  if (p.n_bags == 0) return;
  const CudaPoolLayout l = cuda_pool_layout(p.n_rows, p.n_bags, p.hidden, p.dim, sizeof(A), false);
  const Stats<A> st = stats_of<A>(p, l);
  if (p.n_rows > 0) {
    if (vector_ok<S>(p.proj, p.proj_row_stride, p.hidden)) {
      logits_kernel<S, kVec<S>><<<blocks_for(p.n_rows, kWarps), kThreads, 0, stream>>>(p);
    } else {
      logits_kernel<S, 1><<<blocks_for(p.n_rows, kWarps), kThreads, 0, stream>>>(p);
    }
    check_launch("attention pooling: logits kernel");
  }
  chunk_stats_kernel<A><<<static_cast<unsigned>(l.max_chunks), kThreads, 0, stream>>>(p, st);
  check_launch("attention pooling: chunk softmax kernel");
  bag_stats_kernel<A><<<blocks_for(p.n_bags, kThreads), kThreads, 0, stream>>>(p, st);
  check_launch("attention pooling: bag softmax kernel");
  const bool vec = vector_ok<S>(p.x, p.x_row_stride, p.dim);
  const int64_t tile = kWarp * (vec ? kVec<S> : 1);
  const dim3 grid(static_cast<unsigned>(l.max_chunks), static_cast<unsigned>(ceil_div(p.dim, tile)));
  if (vec) {
    pool_kernel<S, kVec<S>><<<grid, dim3(kWarp, kWarps), 0, stream>>>(p, st);
  } else {
    pool_kernel<S, 1><<<grid, dim3(kWarp, kWarps), 0, stream>>>(p, st);
  }
  check_launch("attention pooling: pooling kernel");
  const dim3 combine_grid(static_cast<unsigned>(p.n_bags), static_cast<unsigned>(ceil_div(p.dim, kThreads)));
  combine_kernel<S><<<combine_grid, kThreads, 0, stream>>>(p, st);
  check_launch("attention pooling: chunk combine kernel");
}

}  // namespace

void attention_pool_forward_cuda(const AttentionPoolParams& p, void* stream) {
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "attention_pool_forward_cuda",
                             [&] { forward<scalar_t>(p, static_cast<cudaStream_t>(stream)); });
}

}  // namespace lrmil
