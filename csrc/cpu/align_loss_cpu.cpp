// CPU kernels of the alignment loss (see lrmil/align_loss.h for the math).
//
// Work is split into (row, chunk of features) tasks: whole rows (up to kChunk features) when
// there are many rows, so each task streams its rows of t and S in long contiguous runs, and
// short chunks when N is small, so that a few rows still fill the cores. The split depends on
// the shapes only; each task writes its partial loss to its own slot and the partials are summed
// per row in a fixed order afterwards, so results are bit-identical whatever the thread count.
// Inner loops run over contiguous features (a compile-time stride of 1 in the common case) and
// vectorise.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "lrmil/align_loss.h"

namespace lrmil {
namespace {

constexpr int64_t kChunk = 1024;       // the most features per task (stack buffers)
constexpr int64_t kSmallChunk = 128;   // features per task when N is small
constexpr int64_t kManyRows = 64;      // from this many rows on, tasks take whole rows
constexpr int64_t kParallelWork = 1 << 16;  // fewer elements read than this: one thread
constexpr int64_t kBandAcc = 4 * kChunk;    // block_mse: r block sums of a chunk (stack buffers)

struct Chunking {
  int64_t d, size, count;
};

// Chunks of at most max_size features (block_mse keeps r chunk-sized sums per task).
Chunking chunking(int64_t n, int64_t d, int64_t max_size = kChunk) {
  const int64_t size = std::min(n >= kManyRows ? kChunk : kSmallChunk, max_size);
  return {d, size, (d + size - 1) / size};
}

Chunking block_chunking(const BlockMseParams& p) {
  return chunking(p.n, p.d, std::max<int64_t>(1, kBandAcc / p.r));
}

// Feature stride: 1 at compile time when every input is contiguous along D.
template <bool Contig>
inline int64_t fstride(int64_t stride) {
  return Contig ? 1 : stride;
}

// fp32 inputs contiguous along D: the hot case, served by the AVX2 / baseline clones below.
template <typename T, bool Contig>
constexpr bool kFastF32 = Contig && std::is_same_v<T, float>;

// Runs task(row, d0, len, slot) over all (row, feature chunk) pairs, in parallel when the
// work (elements read per feature, over all rows) is worth waking the thread team. Dynamic
// scheduling: on a busy machine a thread that is not scheduled does not hold up the others'
// share (each task writes its own slot, so the results do not depend on who ran it).
template <typename Task>
void for_each_chunk(int64_t n, const Chunking& ch, int64_t elems_per_feature, Task task) {
  const int64_t tasks = n * ch.count, d = ch.d;
  const bool parallel = n * d * elems_per_feature >= kParallelWork;
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t job = 0; job < tasks; ++job) {
    const int64_t row = job / ch.count;
    const int64_t d0 = (job % ch.count) * ch.size;
    task(row, d0, std::min(ch.size, d - d0), job);
  }
}

// loss[i] = scale(i) * sum of the row's chunk partials, in chunk order. Serial: it is tiny
// next to the chunk tasks and not worth a second wake-up of the thread team.
template <typename A, typename Scale>
void reduce_rows(int64_t n, const Chunking& ch, const std::vector<A>& partial, A* loss,
                 Scale scale) {
  const int64_t chunks = ch.count;
  for (int64_t i = 0; i < n; ++i) {
    A total = 0;
    for (int64_t c = 0; c < chunks; ++c) total += partial[i * chunks + c];
    loss[i] = scale(i) * total;
  }
}

// ---- per-chunk primitives ----
// block_mse's sums over features keep kLanes partial sums added in a fixed tree: GCC vectorises
// that without -ffast-math and the bits do not depend on the vector width (the AVX2 clone does
// not enable FMA, so no contraction either). child_mse's loop also updates the child mean, and
// such a store keeps GCC from holding kLanes partial sums in registers, so it uses an `omp simd`
// reduction, whose order follows the vector width: the AVX2 and baseline clones may differ in
// the last bits. On one machine, results never depend on the thread count.

constexpr int64_t kLanes = 16;

template <typename A>
LRMIL_INLINE A sum_lanes(A* lane) {
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
    for (int64_t l = 0; l < width; ++l) lane[l] += lane[l + width];
  }
  return lane[0];
}

// child_mse reads up to kGroup children at once when each child's chunk spans at least a page:
// kGroup page-long streams keep more cache misses in flight than one (measured: 13% faster at
// D = 1024 fp32, 20% with the child mean), but shorter streams defeat the hardware prefetcher
// (25% slower at D = 512), and then the children go one by one, in memory order.
constexpr int kGroup = 4;
constexpr int64_t kPageBytes = 4096;

template <typename A>
struct ChildTerms {
  A err, mean;  // sum_c w_c (t_cj - s_j)^2 and sum_c w_c t_cj at one feature j
};

// Up to kGroup children, as separate pointers and weights: loop invariants held in registers.
template <typename T, typename A>
struct Group {
  const T *t0, *t1, *t2, *t3;
  A w0, w1, w2, w3;
};

template <int NC, typename T, typename A>
LRMIL_INLINE ChildTerms<A> child_terms(const Group<T, A>& g, int64_t st, A s, int64_t j) {
  const auto term = [&](const T* t, A w, ChildTerms<A>& r) {
    const A tv = load(t + j * st);
    r.err += w * sq(tv - s);
    r.mean += w * tv;
  };
  ChildTerms<A> r{0, 0};
  term(g.t0, g.w0, r);
  if constexpr (NC > 1) term(g.t1, g.w1, r);
  if constexpr (NC > 2) term(g.t2, g.w2, r);
  if constexpr (NC > 3) term(g.t3, g.w3, r);
  return r;
}

// sum_j sum_c w_c (t_cj - s_j)^2 over a group of NC children; with Mean also
// mean_j += sum_c w_c t_cj, from the same read of t.
template <int NC, bool Mean, typename T, typename A>
LRMIL_INLINE A child_group(const Group<T, A> g, int64_t st, const A* s, A* mean, int64_t len) {
  A err = 0;
#pragma omp simd reduction(+ : err)
  for (int64_t j = 0; j < len; ++j) {
    const ChildTerms<A> r = child_terms<NC>(g, st, s[j], j);
    err += r.err;
    if (Mean) mean[j] += r.mean;
  }
  return err;
}

template <bool Mean, typename T, typename A>
LRMIL_INLINE A child_group_n(const Group<T, A>& g, int nc, int64_t st, const A* s, A* mean,
                             int64_t len) {
  static_assert(kGroup == 4, "one case per group size");
  switch (nc) {
    case 4: return child_group<4, Mean>(g, st, s, mean, len);
    case 3: return child_group<3, Mean>(g, st, s, mean, len);
    case 2: return child_group<2, Mean>(g, st, s, mean, len);
    default: return child_group<1, Mean>(g, st, s, mean, len);
  }
}

LRMIL_CLONES float child_group_f32(const Group<float, float>& g, int nc, const float* s,
                                   float* mean, int64_t len) {
  return mean != nullptr ? child_group_n<true>(g, nc, int64_t(1), s, mean, len)
                         : child_group_n<false>(g, nc, int64_t(1), s, mean, len);
}

template <bool Mean, bool Contig, typename T, typename A>
inline A child_group_any(const Group<T, A>& g, int nc, int64_t st, const A* s, A* mean,
                         int64_t len) {
  if constexpr (kFastF32<T, Contig>) {
    return child_group_f32(g, nc, s, mean, len);
  } else {
    return child_group_n<Mean>(g, nc, fstride<Contig>(st), s, mean, len);
  }
}

// m_j = sum of the b x b cells of a block (cells sy / sx apart), kLanes features at a time with
// the partial sums in registers: the b*b cells are b*b concurrent streams, which keeps more
// cache misses in flight than one stream would (a core's bandwidth is bound by that).
template <typename T, typename A>
LRMIL_INLINE void block_sum(const T* origin, int64_t sy, int64_t sx, int64_t sd, int64_t b, A* m,
                            int64_t len) {
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes) {
    A acc[kLanes] = {};
    for (int64_t y = 0; y < b; ++y) {
      for (int64_t x = 0; x < b; ++x) {
        const T* cell = origin + y * sy + x * sx + j * sd;
        for (int64_t l = 0; l < kLanes; ++l) acc[l] += load(cell + l * sd);
      }
    }
    for (int64_t l = 0; l < kLanes; ++l) m[j + l] = acc[l];
  }
  for (; j < len; ++j) {
    A acc = 0;
    for (int64_t y = 0; y < b; ++y) {
      for (int64_t x = 0; x < b; ++x) acc += load(origin + y * sy + x * sx + j * sd);
    }
    m[j] = acc;
  }
}

LRMIL_CLONES void block_sum_f32(const float* origin, int64_t sy, int64_t sx, int64_t b, float* m,
                                int64_t len) {
  block_sum(origin, sy, sx, int64_t(1), b, m, len);
}

// m[0:len] = mean of S over child k's block, features d0..d0+len.
template <bool Contig, typename T, typename A>
inline void block_mean(const BlockMseParams& p, const T* Si, int64_t k, int64_t d0, int64_t len,
                       A* m) {
  const int64_t b = p.g / p.r;
  int64_t y0, x0;
  child_block_origin(k, p.r, b, &y0, &x0);
  const T* origin = Si + y0 * p.S_sy + x0 * p.S_sx + d0 * fstride<Contig>(p.S_sd);
  if constexpr (kFastF32<T, Contig>) {
    block_sum_f32(origin, p.S_sy, p.S_sx, b, m, len);
  } else {
    block_sum(origin, p.S_sy, p.S_sx, fstride<Contig>(p.S_sd), b, m, len);
  }
  const A inv_area = A(1) / A(b * b);
  for (int64_t j = 0; j < len; ++j) m[j] *= inv_area;
}

// sum_j (m_j - t_j)^2 over one child's chunk.
template <typename T, typename A>
LRMIL_INLINE A block_dist(const A* m, const T* t, int64_t st, int64_t len) {
  A lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lane[l] += sq(m[j + l] - A(load(t + (j + l) * st)));
  }
  for (; j < len; ++j) lane[j % kLanes] += sq(m[j] - A(load(t + j * st)));
  return sum_lanes(lane);
}

LRMIL_CLONES float block_dist_f32(const float* m, const float* t, int64_t len) {
  return block_dist(m, t, int64_t(1), len);
}

// ---- kernels ----

// Mean: also write tbar (only when s needs a gradient).
template <typename T, bool Contig, bool Mean>
void child_mse_fwd_impl(const ChildMseParams& p) {
  using A = acc_t<T>;
  const T* s = static_cast<const T*>(p.s);
  const T* t = static_cast<const T*>(p.t);
  const A* w = static_cast<const A*>(p.w);
  A* tbar = static_cast<A*>(p.tbar);
  const int64_t s_sd = fstride<Contig>(p.s_sd);
  const Chunking ch = chunking(p.n, p.d);
  std::vector<A> partial(p.n * ch.count);

  for_each_chunk(p.n, ch, p.k, [&](int64_t i, int64_t d0, int64_t len, int64_t slot) {
    const A* wi = w + i * p.w_sn;
    const A total = weight_sum(wi, p.k, p.w_sk);
    A* tb = Mean ? tbar + i * p.d + d0 : nullptr;
    if (!(total > A(0))) {
      if (Mean) std::fill(tb, tb + len, A(0));
      partial[slot] = 0;
      return;
    }
    // The student's chunk in the accumulation type (read in place when it already is).
    A buf[kChunk];
    const T* si = s + i * p.s_sn + d0 * s_sd;
    const A* sv = buf;
    if constexpr (Contig && std::is_same_v<T, A>) {
      sv = si;
    } else {
      for (int64_t j = 0; j < len; ++j) buf[j] = load(si + j * s_sd);
    }
    if (Mean) std::fill(tb, tb + len, A(0));
    // Children with weight 0 are never read; the others go in groups (see kGroup).
    const int group = len * int64_t(sizeof(T)) >= kPageBytes ? kGroup : 1;
    const T* group_t[kGroup] = {};
    A group_w[kGroup] = {};
    int nc = 0;
    A err = 0;
    for (int64_t c = 0; c < p.k; ++c) {
      const A wk = wi[c * p.w_sk];
      if (wk != A(0)) {
        group_t[nc] = t + i * p.t_sn + c * p.t_sk + d0 * fstride<Contig>(p.t_sd);
        group_w[nc++] = wk;
      }
      if (nc == group || (c == p.k - 1 && nc > 0)) {
        const Group<T, A> g{group_t[0], group_t[1], group_t[2], group_t[3],
                            group_w[0], group_w[1], group_w[2], group_w[3]};
        err += child_group_any<Mean, Contig>(g, nc, p.t_sd, sv, tb, len);
        nc = 0;
      }
    }
    if (Mean) {
      const A inv_total = A(1) / total;
      for (int64_t j = 0; j < len; ++j) tb[j] *= inv_total;
    }
    partial[slot] = err;
  });
  reduce_rows(p.n, ch, partial, static_cast<A*>(p.loss), [&](int64_t i) {
    return child_mse_scale(weight_sum(w + i * p.w_sn, p.k, p.w_sk), p.d);
  });
}

template <typename T, bool Contig>
void child_mse_bwd_impl(const ChildMseParams& p) {
  using A = acc_t<T>;
  const T* s = static_cast<const T*>(p.s);
  const T* t = static_cast<const T*>(p.t);
  const A* w = static_cast<const A*>(p.w);
  const A* tbar = static_cast<const A*>(p.tbar);
  const A* grad = static_cast<const A*>(p.grad);
  T* ds = static_cast<T*>(p.ds);
  T* dt = static_cast<T*>(p.dt);
  const int64_t s_sd = fstride<Contig>(p.s_sd), t_sd = fstride<Contig>(p.t_sd);
  // ds alone reads s and tbar and writes ds: O(N D), never t.
  const int64_t reads_per_feature = dt != nullptr ? p.k : 1;

  const auto task = [&](int64_t i, int64_t d0, int64_t len, int64_t) {
    const A* wi = w + i * p.w_sn;
    const A total = weight_sum(wi, p.k, p.w_sk);
    const A g_scale = grad[i] * child_mse_scale(total, p.d);
    const T* si = s + i * p.s_sn + d0 * s_sd;
    if (ds != nullptr) {
      const A* tb = tbar + i * p.d + d0;
      const A g_total = g_scale * total;
      T* dsi = ds + i * p.d + d0;
      for (int64_t j = 0; j < len; ++j) {
        store(dsi + j, child_mse_grad_s(g_total, A(load(si + j * s_sd)), tb[j]));
      }
    }
    if (dt == nullptr) return;
    A sv[kChunk];
    for (int64_t j = 0; j < len; ++j) sv[j] = load(si + j * s_sd);
    for (int64_t c = 0; c < p.k; ++c) {
      const A gw = g_scale * wi[c * p.w_sk];
      T* dtk = dt + (i * p.k + c) * p.d + d0;
      if (gw == A(0)) {  // a child of weight 0 (or a row without weight) is not read: its
        for (int64_t j = 0; j < len; ++j) store(dtk + j, A(0));  // NaNs must not leak
        continue;
      }
      const T* tk = t + i * p.t_sn + c * p.t_sk + d0 * t_sd;
      for (int64_t j = 0; j < len; ++j) store(dtk + j, child_mse_grad_t(gw, A(load(tk + j * t_sd)), sv[j]));
    }
  };
  for_each_chunk(p.n, chunking(p.n, p.d), reads_per_feature, task);
}

template <typename T, bool Contig>
void block_mse_fwd_impl(const BlockMseParams& p) {
  using A = acc_t<T>;
  const T* S = static_cast<const T*>(p.S);
  const T* t = static_cast<const T*>(p.t);
  const int64_t k = p.r * p.r, t_sd = fstride<Contig>(p.t_sd);
  const Chunking ch = block_chunking(p);
  std::vector<A> partial(p.n * ch.count);

  for_each_chunk(p.n, ch, p.g * p.g + k, [&](int64_t i, int64_t d0, int64_t len, int64_t slot) {
    const uint8_t* vi = p.valid + i * p.v_sn;
    A m[kBandAcc];
    A err = 0;
    for (int64_t v = 0; v < p.r; ++v) {
      for (int64_t u = 0; u < p.r; ++u) {
        const int64_t c = v * p.r + u;
        if (!vi[c * p.v_sk]) continue;  // invalid children are never read
        block_mean<Contig>(p, S + i * p.S_sn, c, d0, len, m + u * len);
        const T* tk = t + i * p.t_sn + c * p.t_sk + d0 * t_sd;
        if constexpr (kFastF32<T, Contig>) {
          err += block_dist_f32(m + u * len, tk, len);
        } else {
          err += block_dist(m + u * len, tk, t_sd, len);
        }
      }
    }
    partial[slot] = err;
  });
  reduce_rows(p.n, ch, partial, static_cast<A*>(p.loss), [&](int64_t i) {
    return block_mse_scale<A>(count_valid(p.valid + i * p.v_sn, k, p.v_sk), p.d);
  });
}

template <typename T, bool Contig>
void block_mse_bwd_impl(const BlockMseParams& p) {
  using A = acc_t<T>;
  const T* S = static_cast<const T*>(p.S);
  const T* t = static_cast<const T*>(p.t);
  const A* grad = static_cast<const A*>(p.grad);
  T* dS = static_cast<T*>(p.dS);
  T* dt = static_cast<T*>(p.dt);
  const int64_t k = p.r * p.r, b = p.g / p.r, t_sd = fstride<Contig>(p.t_sd);
  const A inv_area = A(1) / A(b * b);

  // One pass: each task reads its chunk of S and t once and writes dS (and dt) once, band by
  // band in memory order; the block means are recomputed rather than stored as (N, K, D).
  const auto task = [&](int64_t i, int64_t d0, int64_t len, int64_t) {
    const uint8_t* vi = p.valid + i * p.v_sn;
    const A g_scale = grad[i] * block_mse_scale<A>(count_valid(vi, k, p.v_sk), p.d);
    A gm[kBandAcc];
    T cell_grad[kBandAcc];  // per child of the band: the gradient of each of its cells
    for (int64_t v = 0; v < p.r; ++v) {
      for (int64_t u = 0; u < p.r; ++u) {
        const int64_t c = v * p.r + u;
        A* gmu = gm + u * len;
        if (vi[c * p.v_sk]) {
          block_mean<Contig>(p, S + i * p.S_sn, c, d0, len, gmu);
          const T* tk = t + i * p.t_sn + c * p.t_sk + d0 * t_sd;
          for (int64_t j = 0; j < len; ++j) {
            gmu[j] = block_mse_grad_m(g_scale, gmu[j], A(load(tk + j * t_sd)));
          }
        } else {
          std::fill(gmu, gmu + len, A(0));
        }
        if (dt != nullptr) {
          T* dtk = dt + (i * k + c) * p.d + d0;
          for (int64_t j = 0; j < len; ++j) store(dtk + j, -gmu[j]);
        }
        for (int64_t j = 0; j < len; ++j) store(cell_grad + u * len + j, gmu[j] * inv_area);
      }
      for (int64_t y = v * b; y < v * b + b; ++y) {
        for (int64_t x = 0; x < p.g; ++x) {
          std::memcpy(dS + ((i * p.g + y) * p.g + x) * p.d + d0, cell_grad + (x / b) * len,
                      len * sizeof(T));
        }
      }
    }
  };
  for_each_chunk(p.n, block_chunking(p), p.g * p.g + k, task);
}

}  // namespace

void child_mse_fwd_cpu(const ChildMseParams& p) {
  const bool contig = p.s_sd == 1 && p.t_sd == 1;
  const bool mean = p.tbar != nullptr;
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "child_mse", [&] {
    if (contig) {
      mean ? child_mse_fwd_impl<scalar_t, true, true>(p) : child_mse_fwd_impl<scalar_t, true, false>(p);
    } else {
      mean ? child_mse_fwd_impl<scalar_t, false, true>(p) : child_mse_fwd_impl<scalar_t, false, false>(p);
    }
  });
}

void child_mse_bwd_cpu(const ChildMseParams& p) {
  const bool contig = p.s_sd == 1 && p.t_sd == 1;
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "child_mse", [&] {
    contig ? child_mse_bwd_impl<scalar_t, true>(p) : child_mse_bwd_impl<scalar_t, false>(p);
  });
}

void block_mse_fwd_cpu(const BlockMseParams& p) {
  const bool contig = p.S_sd == 1 && p.t_sd == 1;
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "block_mse", [&] {
    contig ? block_mse_fwd_impl<scalar_t, true>(p) : block_mse_fwd_impl<scalar_t, false>(p);
  });
}

void block_mse_bwd_cpu(const BlockMseParams& p) {
  const bool contig = p.S_sd == 1 && p.t_sd == 1;
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "block_mse", [&] {
    contig ? block_mse_bwd_impl<scalar_t, true>(p) : block_mse_bwd_impl<scalar_t, false>(p);
  });
}

}  // namespace lrmil
