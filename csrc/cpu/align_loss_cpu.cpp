// CPU kernels of the alignment loss (see lrmil/align_loss.h for the math).
//
// Work is split into (block of rows, chunk of features) tasks: whole rows (up to kChunk
// features) in blocks of several rows when there are many rows, so each task streams its part of
// t and S in long contiguous runs, and single rows in short chunks when N is small, so that a few
// rows still fill the cores. The split depends on the shapes only; each task writes the partial
// loss of each of its rows to its own slot and the partials are summed per row in a fixed order
// afterwards, so results are bit-identical whatever the thread count. Inner loops run over
// contiguous features (a compile-time stride of 1 in the common case) and vectorise.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "lrmil/align_loss.h"

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace lrmil {
namespace {

constexpr int64_t kChunk = 1024;       // the most features per task (stack buffers)
constexpr int64_t kSmallChunk = 128;   // features per task when N is small
constexpr int64_t kManyRows = 64;      // from this many rows on, tasks take whole rows
constexpr int64_t kMaxBlockRows = 32;  // rows per task, at most (child_mse)
constexpr int64_t kParallelWork = 1 << 16;  // fewer elements read than this: one thread
constexpr int64_t kBandAcc = 4 * kChunk;    // block_mse backward: a band's r cell gradients

struct Chunking {
  int64_t d, size, count;  // features, features per chunk, chunks per row
  int64_t rows;            // rows per task
};

// Chunks of at most max_size features (block_mse's backward keeps r chunk-sized cell gradients
// per task); with many rows, blocks of up to max_rows rows, at least 32 blocks (load balance on a
// busy machine).
Chunking chunking(int64_t n, int64_t d, int64_t max_size = kChunk, int64_t max_rows = 1) {
  const bool many = n >= kManyRows;
  const int64_t size = std::min(many ? kChunk : kSmallChunk, max_size);
  const int64_t rows = many ? std::clamp<int64_t>(n / 32, 1, max_rows) : 1;
  return {d, size, (d + size - 1) / size, rows};
}

// Blocks of up to 8 rows: with G = 16, D = 768 and fp32 a task writes 6 MB of dS, so that the two
// threads seldom first-touch the same huge page of a fresh dS at once.
Chunking block_chunking(const BlockMseParams& p) {
  return chunking(p.n, p.d, std::max<int64_t>(1, kBandAcc / p.r), 8);
}

// Feature stride: 1 at compile time when every input is contiguous along D.
template <bool Contig>
inline int64_t fstride(int64_t stride) {
  return Contig ? 1 : stride;
}

// fp32 inputs contiguous along D: the hot case, served by the AVX2 / baseline clones below.
template <typename T, bool Contig>
constexpr bool kFastF32 = Contig && std::is_same_v<T, float>;

// Runs task(row0, row1, d0, len, chunk) over all (block of rows, feature chunk) pairs, in
// parallel when the work (elements read per feature, over all rows) is worth waking the thread
// team. Dynamic scheduling: on a busy machine a thread that is not scheduled does not hold up
// the others' share (each task writes its own slots, so the results do not depend on who ran it).
// Blocks go out in order, or with `apart` (a task that first-touches a big fresh output) cut
// into one run per thread and handed out from the runs in turn, so that the threads work far
// apart: two threads first-touching the same huge page wait on each other (measured: 2-3x the
// system time of writing a fresh 805 MB dS). In order, one thread reading alone (the other one
// busy elsewhere) streams through one run instead of two (3-6% faster on a cold t).
template <typename Task>
void for_each_chunk(int64_t n, const Chunking& ch, int64_t elems_per_feature, Task task,
                    bool apart = false) {
  const int64_t blocks = (n + ch.rows - 1) / ch.rows, d = ch.d;
  const bool parallel = n * d * elems_per_feature >= kParallelWork;
#pragma omp parallel if (parallel)
  {
#if defined(_OPENMP)
    const int64_t runs = apart ? omp_get_num_threads() : 1;
#else
    const int64_t runs = 1;
#endif
    const int64_t run_len = (blocks + runs - 1) / runs;
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < runs * run_len * ch.count; ++job) {
      const int64_t slot = job / ch.count, chunk = job % ch.count;
      const int64_t block = (slot % runs) * run_len + slot / runs;
      if (block >= blocks) continue;
      const int64_t row0 = block * ch.rows, d0 = chunk * ch.size;
      task(row0, std::min(n, row0 + ch.rows), d0, std::min(ch.size, d - d0), chunk);
    }
  }
}

// loss[i] = scale(i) * sum of the row's chunk partials (partial[i * chunks + chunk]), in chunk
// order. Serial: it is tiny next to the chunk tasks and not worth a second wake-up of the team.
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

// sum_c w_c sum_j (t_cj - s_j)^2 over one row's chunk, children with weight 0 never read, the
// others one by one in memory order (one stream: several side by side, from other children or
// rows, measured slower with huge pages); with Resid also resid_j = s_j - sum_c w_c t_cj / W,
// from the same read of t. Rows with W <= 0 are not read.
// The weighted sum accumulates in a stack buffer, not in resid: read-modify-writes into the
// output ran up to 20% slower on one core depending on where torch had placed it relative to t
// (N = 4096, K = 16, D = 768: 17 vs 14 ms). A software prefetch of the next page, 5% faster in
// one build, was 20% slower in another (the loop's code alignment), and is not used.

template <bool Resid, typename T, typename A>
LRMIL_INLINE A child_row(const T* t, int64_t t_sk, int64_t t_sd, const A* w, int64_t w_sk,
                         int64_t k, A total, const A* s, A* resid, int64_t len) {
  if (!(total > A(0))) {
    if (Resid) std::fill(resid, resid + len, A(0));
    return 0;
  }
  alignas(64) A sum[kChunk];
  if (Resid) std::fill(sum, sum + len, A(0));
  A err = 0;
  for (int64_t c = 0; c < k; ++c) {
    const A wc = w[c * w_sk];
    if (wc == A(0)) continue;
    const T* tc = t + c * t_sk;
    A e = 0;
#pragma omp simd reduction(+ : e)
    for (int64_t j = 0; j < len; ++j) {
      const A tv = load(tc + j * t_sd);
      e += wc * sq(tv - s[j]);
      if (Resid) sum[j] += wc * tv;
    }
    err += e;
  }
  if (Resid) {
    const A inv_total = A(1) / total;
    for (int64_t j = 0; j < len; ++j) resid[j] = s[j] - sum[j] * inv_total;
  }
  return err;
}

LRMIL_CLONES float child_row_f32(const float* t, int64_t t_sk, const float* w, int64_t w_sk,
                                 int64_t k, float total, const float* s, float* resid,
                                 int64_t len) {
  return resid != nullptr
             ? child_row<true>(t, t_sk, int64_t(1), w, w_sk, k, total, s, resid, len)
             : child_row<false>(t, t_sk, int64_t(1), w, w_sk, k, total, s, resid, len);
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

// sum_j (m_j - t_j)^2 over one child's chunk; with resid (not null) also resid_j = m_j - t_j, all
// the backward needs.
template <typename T, typename A>
LRMIL_INLINE A block_dist(const A* m, const T* t, int64_t st, A* resid, int64_t len) {
  A lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const A diff = m[j + l] - A(load(t + (j + l) * st));
      lane[l] += sq(diff);
      if (resid != nullptr) resid[j + l] = diff;
    }
  }
  for (; j < len; ++j) {
    const A diff = m[j] - A(load(t + j * st));
    lane[j % kLanes] += sq(diff);
    if (resid != nullptr) resid[j] = diff;
  }
  return sum_lanes(lane);
}

LRMIL_CLONES float block_dist_f32(const float* m, const float* t, float* resid, int64_t len) {
  return resid != nullptr ? block_dist(m, t, int64_t(1), resid, len)
                          : block_dist(m, t, int64_t(1), static_cast<float*>(nullptr), len);
}

// ---- writing big outputs ----
// A fresh page (first touch) is zeroed by the kernel, which leaves its lines in the cache: plain
// stores into it are the cheapest. An already mapped page (a buffer reused from the heap) is in
// memory only, and there streaming stores skip reading each line before writing it (block_mse's
// dS, reused: 2.5x faster to write on one core). Whether the page is mapped says which.
bool mapped(const void* p) {
#if defined(__linux__)
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  unsigned char in_core = 0;
  void* start = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) & ~(page - 1));
  return mincore(start, 1, &in_core) == 0 && (in_core & 1) != 0;
#else
  (void)p;
  return false;
#endif
}

// memcpy, with streaming stores for the 16-byte aligned body when `stream`.
void copy_out(void* dst, const void* src, size_t bytes, bool stream) {
#if defined(__SSE2__)
  if (stream) {
    auto* d = static_cast<char*>(dst);
    const auto* s = static_cast<const char*>(src);
    const size_t head = std::min(bytes, (16 - reinterpret_cast<uintptr_t>(d) % 16) % 16);
    std::memcpy(d, s, head);
    size_t i = head;
    for (; i + 16 <= bytes; i += 16) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i),
                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
    }
    std::memcpy(d + i, s + i, bytes - i);
    return;
  }
#endif
  (void)stream;
  std::memcpy(dst, src, bytes);
}

// Orders the streaming stores before the results are used (they are weakly ordered).
void end_streaming() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// For each block of rows (rows_per_block rows of row_bytes from base), whether its first page is
// mapped; asked before any task writes (a task's first touch would map its neighbour's pages).
std::vector<uint8_t> mapped_blocks(const void* base, int64_t n, int64_t rows_per_block,
                                   int64_t row_bytes) {
  std::vector<uint8_t> out((n + rows_per_block - 1) / rows_per_block);
  for (size_t q = 0; q < out.size(); ++q) {
    out[q] = mapped(static_cast<const char*>(base) + int64_t(q) * rows_per_block * row_bytes);
  }
  return out;
}

// ---- kernels ----

// Resid: also write resid = s - tbar (only when s needs a gradient).
template <typename T, bool Contig, bool Resid>
void child_mse_fwd_impl(const ChildMseParams& p) {
  using A = acc_t<T>;
  const T* s = static_cast<const T*>(p.s);
  const T* t = static_cast<const T*>(p.t);
  const A* w = static_cast<const A*>(p.w);
  A* resid = static_cast<A*>(p.resid);
  const int64_t s_sd = fstride<Contig>(p.s_sd), t_sd = fstride<Contig>(p.t_sd);
  const Chunking ch = chunking(p.n, p.d, kChunk, kMaxBlockRows);
  std::vector<A> partial(p.n * ch.count);

  for_each_chunk(p.n, ch, p.k, [&](int64_t r0, int64_t r1, int64_t d0, int64_t len, int64_t chunk) {
    for (int64_t i = r0; i < r1; ++i) {
      const A* wi = w + i * p.w_sn;
      const A total = weight_sum(wi, p.k, p.w_sk);
      const T* ti = t + i * p.t_sn + d0 * t_sd;
      A* ri = Resid ? resid + i * p.d + d0 : nullptr;
      // The student's chunk in the accumulation type (read in place when it already is).
      A buf[kChunk];
      const T* si = s + i * p.s_sn + d0 * s_sd;
      const A* sv = buf;
      if constexpr (Contig && std::is_same_v<T, A>) {
        sv = si;
      } else if (total > A(0)) {
        for (int64_t j = 0; j < len; ++j) buf[j] = load(si + j * s_sd);
      }
      A err;
      if constexpr (kFastF32<T, Contig>) {
        err = child_row_f32(ti, p.t_sk, wi, p.w_sk, p.k, total, sv, ri, len);
      } else {
        err = child_row<Resid>(ti, p.t_sk, t_sd, wi, p.w_sk, p.k, total, sv, ri, len);
      }
      partial[i * ch.count + chunk] = err;
    }
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
  const A* resid = static_cast<const A*>(p.resid);
  const A* grad = static_cast<const A*>(p.grad);
  T* ds = static_cast<T*>(p.ds);
  T* dt = static_cast<T*>(p.dt);
  const int64_t s_sd = fstride<Contig>(p.s_sd), t_sd = fstride<Contig>(p.t_sd);
  // ds alone reads resid and writes ds: O(N D), never s or t.
  const int64_t reads_per_feature = dt != nullptr ? p.k : 1;

  const auto row_task = [&](int64_t i, int64_t d0, int64_t len, bool streaming) {
    const A* wi = w + i * p.w_sn;
    const A total = weight_sum(wi, p.k, p.w_sk);
    const A g_scale = grad[i] * child_mse_scale(total, p.d);
    if (ds != nullptr) {
      const A* ri = resid + i * p.d + d0;
      const A g_total = g_scale * total;
      T out[kChunk];
      for (int64_t j = 0; j < len; ++j) store(out + j, child_mse_grad_s(g_total, ri[j]));
      copy_out(ds + i * p.d + d0, out, len * sizeof(T), streaming);
    }
    if (dt == nullptr) return;
    const T* si = s + i * p.s_sn + d0 * s_sd;
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
  // ds (into mapped pages, e.g. a heap block reused) with streaming stores: nothing reads it
  // here again.
  const Chunking ch = chunking(p.n, p.d, kChunk, kMaxBlockRows);
  const std::vector<uint8_t> stream =
      ds != nullptr ? mapped_blocks(ds, p.n, ch.rows, p.d * sizeof(T)) : std::vector<uint8_t>();
  for_each_chunk(p.n, ch, reads_per_feature,
                 [&](int64_t r0, int64_t r1, int64_t d0, int64_t len, int64_t) {
                   const bool streaming = ds != nullptr && stream[r0 / ch.rows] != 0;
                   for (int64_t i = r0; i < r1; ++i) row_task(i, d0, len, streaming);
                   if (streaming) end_streaming();
                 });
}

template <typename T, bool Contig>
void block_mse_fwd_impl(const BlockMseParams& p) {
  using A = acc_t<T>;
  const T* S = static_cast<const T*>(p.S);
  const T* t = static_cast<const T*>(p.t);
  A* resid = static_cast<A*>(p.resid);
  const int64_t k = p.r * p.r, t_sd = fstride<Contig>(p.t_sd);
  const Chunking ch = block_chunking(p);
  std::vector<A> partial(p.n * ch.count);

  for_each_chunk(p.n, ch, p.g * p.g + k, [&](int64_t r0, int64_t r1, int64_t d0, int64_t len, int64_t chunk) {
    for (int64_t i = r0; i < r1; ++i) {
      const uint8_t* vi = p.valid + i * p.v_sn;
      A m[kChunk];
      A err = 0;
      for (int64_t c = 0; c < k; ++c) {
        A* rc = resid != nullptr ? resid + (i * k + c) * p.d + d0 : nullptr;
        if (!vi[c * p.v_sk]) {  // invalid children are never read; their residual is 0
          if (rc != nullptr) std::fill(rc, rc + len, A(0));
          continue;
        }
        block_mean<Contig>(p, S + i * p.S_sn, c, d0, len, m);
        const T* tk = t + i * p.t_sn + c * p.t_sk + d0 * t_sd;
        if constexpr (kFastF32<T, Contig>) {
          err += block_dist_f32(m, tk, rc, len);
        } else {
          err += block_dist(m, tk, t_sd, rc, len);
        }
      }
      partial[i * ch.count + chunk] = err;
    }
  });
  reduce_rows(p.n, ch, partial, static_cast<A*>(p.loss), [&](int64_t i) {
    return block_mse_scale<A>(count_valid(p.valid + i * p.v_sn, k, p.v_sk), p.d);
  });
}

// From the forward's residuals alone (S and t are not read again): each band of r children
// writes its b rows of dS in memory order.
template <typename T>
void block_mse_bwd_impl(const BlockMseParams& p) {
  using A = acc_t<T>;
  const A* resid = static_cast<const A*>(p.resid);
  const A* grad = static_cast<const A*>(p.grad);
  T* dS = static_cast<T*>(p.dS);
  T* dt = static_cast<T*>(p.dt);
  const int64_t k = p.r * p.r, b = p.g / p.r;
  const A inv_area = A(1) / A(b * b);

  const auto row_task = [&](int64_t i, int64_t d0, int64_t len, bool streaming) {
    const A g_scale = grad[i] * block_mse_scale<A>(count_valid(p.valid + i * p.v_sn, k, p.v_sk), p.d);
    T cell_grad[kBandAcc];  // per child of the band: the gradient of each of its cells
    for (int64_t v = 0; v < p.r; ++v) {
      for (int64_t u = 0; u < p.r; ++u) {
        const int64_t c = v * p.r + u;
        const A* rc = resid + (i * k + c) * p.d + d0;
        T* cg = cell_grad + u * len;
        T* dtc = dt != nullptr ? dt + (i * k + c) * p.d + d0 : nullptr;
        for (int64_t j = 0; j < len; ++j) {
          const A gm = block_mse_grad_m(g_scale, rc[j]);
          store(cg + j, gm * inv_area);
          if (dtc != nullptr) store(dtc + j, -gm);
        }
      }
      for (int64_t y = v * b; y < v * b + b; ++y) {
        for (int64_t x = 0; x < p.g; ++x) {
          copy_out(dS + ((i * p.g + y) * p.g + x) * p.d + d0, cell_grad + (x / b) * len,
                   len * sizeof(T), streaming);
        }
      }
    }
  };
  const Chunking ch = block_chunking(p);
  const std::vector<uint8_t> stream = mapped_blocks(dS, p.n, ch.rows, p.g * p.g * p.d * sizeof(T));
  for_each_chunk(
      p.n, ch, p.g * p.g + k,
      [&](int64_t r0, int64_t r1, int64_t d0, int64_t len, int64_t) {
        const bool streaming = stream[r0 / ch.rows] != 0;
        for (int64_t i = r0; i < r1; ++i) row_task(i, d0, len, streaming);
        if (streaming) end_streaming();
      },
      /*apart=*/true);
}

}  // namespace

void child_mse_fwd_cpu(const ChildMseParams& p) {
  const bool contig = p.s_sd == 1 && p.t_sd == 1;
  const bool resid = p.resid != nullptr;
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "child_mse", [&] {
    if (contig) {
      resid ? child_mse_fwd_impl<scalar_t, true, true>(p) : child_mse_fwd_impl<scalar_t, true, false>(p);
    } else {
      resid ? child_mse_fwd_impl<scalar_t, false, true>(p) : child_mse_fwd_impl<scalar_t, false, false>(p);
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
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "block_mse", [&] { block_mse_bwd_impl<scalar_t>(p); });
}

}  // namespace lrmil
