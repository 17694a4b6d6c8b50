// Gated attention pooling over packed ragged bags: parameters and the per-element math that the
// CPU and CUDA kernels share.
//
//   e_t    = sum_l w_l * tanh(proj[t, l]) * sigmoid(proj[t, L + l]) + b_w     (logits)
//   attn_t = softmax of e over the bag of t (max-subtracted)                 (attn)
//   pooled = sum_{t in bag} attn_t * x_t                                     (pooled)
//
// Bag b holds rows [offsets[b], offsets[b+1]). Empty bags, and bags whose logits are all -inf,
// pool to zeros with zero attention and zero gradients.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "lrmil/common.h"

namespace lrmil {

// Sizes and strides are in elements. Columns of proj, x and their gradients are contiguous
// (unit stride, so the inner loops vectorise); rows may have any stride. w has acc_t storage.
struct AttentionPoolParams {
  int64_t n_rows = 0;     // T
  int64_t n_bags = 0;     // B
  int64_t hidden = 0;     // L
  int64_t dim = 0;        // D
  DType dtype = DType::Float32;  // of proj, x, pooled, grad_pooled, grad_proj, grad_x

  const void* proj = nullptr;    // (T, 2L)
  int64_t proj_row_stride = 0;
  const void* x = nullptr;       // (T, D)
  int64_t x_row_stride = 0;
  const void* w = nullptr;       // (L,) acc_t
  const void* b_w = nullptr;     // () acc_t
  const int64_t* offsets = nullptr;  // (B + 1,)

  // Forward outputs (contiguous): pooled (B, D) in dtype; attn and logits (T,) in acc_t.
  void* pooled = nullptr;
  void* attn = nullptr;
  void* logits = nullptr;

  // Backward inputs: grad_pooled (B, D) in dtype, row stride below; grad_attn and grad_logits
  // (T,) contiguous acc_t, or null when those outputs got no gradient. attn as saved forward.
  const void* grad_pooled = nullptr;
  int64_t grad_pooled_row_stride = 0;
  const void* grad_attn = nullptr;
  const void* grad_logits = nullptr;

  // Backward outputs (contiguous): grad_proj (T, 2L), grad_x (T, D) in dtype; grad_w (L,) and
  // grad_b_w () in acc_t. grad_proj may be proj itself (the training layer's in-place backward).
  void* grad_proj = nullptr;
  void* grad_x = nullptr;
  void* grad_w = nullptr;
  void* grad_b_w = nullptr;

  // CUDA only, both from torch's allocator on the launch stream: the chunk plan (2, B + 1)
  // int64 of lrmil/ops/attention_pool.py's cuda_chunk_plan, and scratch of
  // cuda_pool_layout(...).bytes bytes.
  const int64_t* plan = nullptr;
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// ---- CUDA launch plan (host code, in every build so that the CPU tests check it) ----
//
// Bags are split into chunks of at most kCudaChunkRows rows (flash-decoding style): a block
// per chunk computes partial softmax statistics and partial pooled sums, combined per bag in
// chunk order (deterministic). Chunk counts per bag come from the plan (device prefix sums);
// the grids and the workspace are sized by bounds that depend on the shapes alone:
//   chunks <= ceil(T / C) + B (a bag of n rows has max(1, ceil(n / C)) <= n / C + 1 chunks),
//   slots  <= 2 ceil(T / C)   (only bags longer than C keep partial sums, ceil(n / C) < 2n / C).
constexpr int64_t kCudaChunkRows = 256;
// The gate backward runs on (row block, hidden tile) grids: rows per block, hidden units per
// tile (one thread each: no shared memory, so no limit on the hidden size).
constexpr int64_t kCudaGateRows = 128;
constexpr int64_t kCudaHiddenTile = 128;
constexpr int64_t kCudaMaxGridY = 65535;

struct CudaPoolLayout {
  int64_t chunk_rows = kCudaChunkRows;
  int64_t max_chunks = 0;   // grid of the per-chunk kernels
  int64_t max_slots = 0;    // partial pooled sums (rows of D accumulators)
  int64_t gate_blocks = 0;  // row blocks of the gate backward
  int64_t hidden_tiles = 0;
  // Byte offsets into the workspace (each 256-byte aligned) and its size.
  int64_t chunk_stats = 0;  // forward: max, sum per chunk; backward: the dot per chunk
  int64_t bag_stats = 0;    // forward: shift, 1 / sum per bag; backward: the dot per bag
  int64_t partial = 0;      // forward: max_slots x D; backward: gate_blocks x (L + 1)
  int64_t grad_logit = 0;   // backward: T
  int64_t bytes = 0;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t align256(int64_t bytes) { return ceil_div(bytes, 256) * 256; }

// acc_bytes: 4 (fp32 accumulation) or 8 (fp64).
inline CudaPoolLayout cuda_pool_layout(int64_t n_rows, int64_t n_bags, int64_t hidden, int64_t dim,
                                       int64_t acc_bytes, bool backward) {
  CudaPoolLayout l;
  const int64_t whole = ceil_div(n_rows, l.chunk_rows);
  l.max_chunks = whole + n_bags;
  l.max_slots = 2 * whole;
  l.gate_blocks = ceil_div(n_rows, kCudaGateRows);
  l.hidden_tiles = ceil_div(hidden, kCudaHiddenTile);
  if (l.hidden_tiles > kCudaMaxGridY) {
    throw std::invalid_argument("gated_attention_pool (CUDA): hidden size " + std::to_string(hidden) +
                                " needs more than 65535 tiles of " + std::to_string(kCudaHiddenTile));
  }
  int64_t at = 0;
  l.chunk_stats = at;
  at += align256(2 * l.max_chunks * acc_bytes);
  l.bag_stats = at;
  at += align256(2 * n_bags * acc_bytes);
  l.partial = at;
  at += align256((backward ? l.gate_blocks * (hidden + 1) : l.max_slots * dim) * acc_bytes);
  l.grad_logit = at;
  at += backward ? align256(n_rows * acc_bytes) : 0;
  l.bytes = at;
  return l;
}

// exp in fp32 without library calls or branches, so that loops over the hidden units vectorise
// (libm's expf does not): Cephes' range reduction and polynomial, ~2 ulp. The argument is
// clamped so the result is always a finite normal number (exp(-87.3) ~ 1e-38, never 0 or inf),
// which keeps tanh and sigmoid free of inf / inf.
// 2^n as a float for n in [-126, 127], from its exponent bits (a bit cast the vectoriser keeps).
LRMIL_HD float exp2_int(int32_t n) {
#if defined(__CUDA_ARCH__)
  return __int_as_float((n + 127) << 23);
#else
  return __builtin_bit_cast(float, static_cast<uint32_t>(n + 127) << 23);
#endif
}

// Compare-and-select, not fminf / fmaxf: those return the other operand for a NaN, which would
// turn a NaN logit into a finite weight; here NaN stays NaN (as in the CPU path and torch).
LRMIL_HD float clamp_exp_arg(float v) {
  v = v < -87.3f ? -87.3f : v;
  return v > 88.3f ? 88.3f : v;
}

LRMIL_HD float exp_approx(float v) {
  v = clamp_exp_arg(v);
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float n = (v * 1.44269504088896341f + kRound) - kRound;
  float r = v - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  return y * exp2_int(static_cast<int32_t>(n));
}
LRMIL_HD double exp_approx(double v) { return std::exp(v); }

// tanh and sigmoid through exp of a non-positive argument: no overflow for any input.
template <typename A> LRMIL_HD A gate_tanh(A v) {
  const A z = exp_approx(A(-2) * (v < A(0) ? -v : v));
  const A t = (A(1) - z) / (A(1) + z);
  return v < A(0) ? -t : t;
}

template <typename A> LRMIL_HD A gate_sigmoid(A v) {
  const A z = exp_approx(v < A(0) ? v : -v);  // exp(-|v|)
  const A s = A(1) / (A(1) + z);
  return v < A(0) ? z * s : s;
}

// One hidden unit's contribution to the logit: w * tanh(v) * sigmoid(u).
template <typename A> LRMIL_HD A gate_term(A v, A u, A w) {
  return w * gate_tanh(v) * gate_sigmoid(u);
}

// Gradients of gate_term with respect to v and u, scaled by the logit's gradient de, and
// the gate value tanh(v) * sigmoid(u) (the w gradient per unit de).
template <typename A> struct GateGrad { A dv, du, gate; };

template <typename A> LRMIL_HD GateGrad<A> gate_term_grad(A v, A u, A w, A de) {
  const A a = gate_tanh(v);
  const A g = gate_sigmoid(u);
  const A dwg = de * w;
  return {dwg * (A(1) - a * a) * g, dwg * a * g * (A(1) - g), a * g};
}

// The softmax shift of a bag: its max logit, or 0 when no logit is finite-or-+inf (empty bag or
// all -inf), so exp(e - shift) is 0 instead of NaN.
template <typename A> LRMIL_HD A softmax_shift(A max_logit) {
  return (max_logit == -INFINITY || max_logit != max_logit) ? A(0) : max_logit;
}

template <typename A> LRMIL_HD A safe_inverse(A sum) { return sum > A(0) ? A(1) / sum : A(0); }

// Bag holding row t: the last b with offsets[b] <= t among non-empty bags (binary search).
LRMIL_HD int64_t bag_of_row(const int64_t* offsets, int64_t n_bags, int64_t t) {
  int64_t lo = 0, hi = n_bags - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= t) lo = mid; else hi = mid - 1;
  }
  return lo;
}

void attention_pool_forward_cpu(const AttentionPoolParams& p);
void attention_pool_backward_cpu(const AttentionPoolParams& p);
#if defined(LRMIL_WITH_CUDA)
// The caller makes the tensors' device current (torch.cuda.device in Python) and passes torch's
// current stream there; these never change the current device.
void attention_pool_forward_cuda(const AttentionPoolParams& p, void* stream);
void attention_pool_backward_cuda(const AttentionPoolParams& p, void* stream);
#endif

}  // namespace lrmil
