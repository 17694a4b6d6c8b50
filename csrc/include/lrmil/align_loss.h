// The cross-resolution alignment loss (method.md, stage 1): params and the per-element math
// shared by the CPU and CUDA kernels.
//
// child_mse(s (N,D), t (N,K,D), w (N,K)) -> loss (N,) = sum_k w_k/W * mean_d (t_kd - s_d)^2,
//   W = sum_k w_k; rows with W <= 0 give 0. The forward also writes resid (N,D) = s - tbar, with
//   tbar = sum_k w_k t_k / W the weighted child mean (resid = 0 for rows with W <= 0): all the
//   backward needs for ds = 2 g / D * resid, without reading s or t again.
// block_mse(S (N,G,G,D), t (N,K,D), valid (N,K), r) -> loss (N,) = mean over valid k of
//   mean_d (m_kd - t_kd)^2, m_k the mean of S over the (G/r)x(G/r) block of child k = v*r + u
//   (rows v*b.., columns u*b.., b = G/r); rows without a valid child give 0. When S needs a
//   gradient the forward also writes resid (N,K,D) = m_k - t_k (0 for invalid children), all
//   the backward needs: it reads neither S nor t again.
#pragma once

#include <cstdint>

#include "lrmil/common.h"

namespace lrmil {

// Sizes and strides in elements: inputs may be any strided view; outputs (loss, resid, grads)
// are contiguous buffers allocated by Python.
struct ChildMseParams {
  int64_t n = 0, k = 0, d = 0;
  const void* s = nullptr;  // (N, D), storage dtype
  int64_t s_sn = 0, s_sd = 0;
  const void* t = nullptr;  // (N, K, D), storage dtype
  int64_t t_sn = 0, t_sk = 0, t_sd = 0;
  const void* w = nullptr;  // (N, K), accumulation dtype (fp32, fp64 for fp64 inputs)
  int64_t w_sn = 0, w_sk = 0;
  void* loss = nullptr;  // (N,), accumulation dtype, contiguous
  void* resid = nullptr;  // (N, D), accumulation dtype, contiguous; null: not needed (no ds)
  // Backward only.
  const void* grad = nullptr;  // (N,) upstream gradient of loss, accumulation dtype, contiguous
  void* ds = nullptr;          // (N, D) storage dtype, contiguous; null when s needs no grad
  void* dt = nullptr;          // (N, K, D) storage dtype, contiguous; null when t needs no grad
  DType dtype = DType::Float32;
  void* partial = nullptr;  // CUDA forward: (N, tiles) scratch in the accumulation dtype
};

struct BlockMseParams {
  int64_t n = 0, g = 0, r = 0, d = 0;  // K = r * r
  const void* S = nullptr;             // (N, G, G, D), storage dtype
  int64_t S_sn = 0, S_sy = 0, S_sx = 0, S_sd = 0;
  const void* t = nullptr;  // (N, K, D), storage dtype
  int64_t t_sn = 0, t_sk = 0, t_sd = 0;
  const uint8_t* valid = nullptr;  // (N, K) bool
  int64_t v_sn = 0, v_sk = 0;
  void* loss = nullptr;  // (N,), accumulation dtype, contiguous
  void* resid = nullptr;  // (N, K, D), accumulation dtype, contiguous; forward: null = not needed
  // Backward only.
  const void* grad = nullptr;  // (N,), accumulation dtype, contiguous
  void* dS = nullptr;          // (N, G, G, D) storage dtype, contiguous
  void* dt = nullptr;          // (N, K, D) storage dtype, contiguous; null when t needs no grad
  DType dtype = DType::Float32;
  void* partial = nullptr;  // CUDA forward: (N, K, tiles) scratch in the accumulation dtype
};

// CUDA grids: (row, feature tile) for child_mse, (row, child x feature tile) for block_mse; a
// tile is kCudaAlignThreads threads of kCudaAlignRun consecutive features (16-byte loads).
// The forward's per-tile partial losses go to a scratch buffer (Python allocates it from
// torch: `cuda_align_tiles(D)` tiles per row, or per row and child) and are added per row in
// tile order (deterministic).
constexpr int64_t kCudaAlignThreads = 32;
constexpr int64_t kCudaAlignRun = 8;
constexpr int64_t kCudaAlignTile = kCudaAlignThreads * kCudaAlignRun;

LRMIL_HD int64_t cuda_align_tiles(int64_t d) { return (d + kCudaAlignTile - 1) / kCudaAlignTile; }

// ---- per-row scalars ----

template <typename A>
LRMIL_HD A weight_sum(const A* w, int64_t k, int64_t sk) {
  A total = 0;
  for (int64_t j = 0; j < k; ++j) total += w[j * sk];
  return total;
}

// 1 / (W * D) for a row with positive total weight, else 0 (the row's loss and grads vanish).
template <typename A>
LRMIL_HD A child_mse_scale(A total, int64_t d) {
  return total > A(0) ? A(1) / (total * A(d)) : A(0);
}

LRMIL_HD int64_t count_valid(const uint8_t* valid, int64_t k, int64_t sk) {
  int64_t n = 0;
  for (int64_t j = 0; j < k; ++j) n += valid[j * sk] != 0;
  return n;
}

// 1 / (n_valid * D), or 0 for a row without valid children.
template <typename A>
LRMIL_HD A block_mse_scale(int64_t n_valid, int64_t d) {
  return n_valid > 0 ? A(1) / (A(n_valid) * A(d)) : A(0);
}

// ---- per-element math ----

template <typename A>
LRMIL_HD A sq(A x) {
  return x * x;
}

// d loss / d s_d for child_mse: 2 g / D * (s_d - tbar_d), written as 2 g W scale resid_d.
template <typename A>
LRMIL_HD A child_mse_grad_s(A g_scale_total, A resid) {
  return A(2) * g_scale_total * resid;
}

// d loss / d t_kd for child_mse: 2 g w_k / (W D) * (t_kd - s_d).
template <typename A>
LRMIL_HD A child_mse_grad_t(A g_scale_wk, A t, A s) {
  return A(2) * g_scale_wk * (t - s);
}

// d loss / d m_kd for block_mse: 2 g / (n_valid D) * resid_kd, resid = m - t; d/dt is its
// negative and every S element of the block receives it divided by b*b.
template <typename A>
LRMIL_HD A block_mse_grad_m(A g_scale, A resid) {
  return A(2) * g_scale * resid;
}

// Top-left grid cell (row y0, column x0) of child k's block.
LRMIL_HD void child_block_origin(int64_t k, int64_t r, int64_t b, int64_t* y0, int64_t* x0) {
  *y0 = (k / r) * b;
  *x0 = (k % r) * b;
}

// ---- entry points ----

void child_mse_fwd_cpu(const ChildMseParams& p);
void child_mse_bwd_cpu(const ChildMseParams& p);
void block_mse_fwd_cpu(const BlockMseParams& p);
void block_mse_bwd_cpu(const BlockMseParams& p);

#if defined(LRMIL_WITH_CUDA)
void child_mse_fwd_cuda(const ChildMseParams& p, void* stream);
void child_mse_bwd_cuda(const ChildMseParams& p, void* stream);
void block_mse_fwd_cuda(const BlockMseParams& p, void* stream);
void block_mse_bwd_cuda(const BlockMseParams& p, void* stream);
#endif

}  // namespace lrmil
