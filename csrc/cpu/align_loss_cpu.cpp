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
#include <stdexcept>
#include <string>
#include <vector>

#include "lrmil/align_loss.h"

namespace lrmil {
namespace {

constexpr int64_t kChunk = 1024;       // the most features per task (stack buffers)
constexpr int64_t kSmallChunk = 128;   // features per task when N is small
constexpr int64_t kManyRows = 64;      // from this many rows on, tasks take whole rows
constexpr int64_t kParallelWork = 1 << 16;  // fewer elements read than this: one thread

struct Chunking {
  int64_t size, count;
};

Chunking chunking(int64_t n, int64_t d) {
  const int64_t size = n >= kManyRows ? kChunk : kSmallChunk;
  return {size, (d + size - 1) / size};
}

// Feature stride: 1 at compile time when every input is contiguous along D.
template <bool Contig>
inline int64_t fstride(int64_t stride) {
  return Contig ? 1 : stride;
}

template <typename A>
A sum_chunk(const A* x, int64_t len) {
  A total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < len; ++j) total += x[j];
  return total;
}

// Runs task(row, d0, len, slot) over all (row, feature chunk) pairs, in parallel when the
// work (elements read per feature, over all rows) is worth waking the thread team. Dynamic
// scheduling: on a busy machine a thread that is not scheduled does not hold up the others'
// share (each task writes its own slot, so the results do not depend on who ran it).
template <typename Task>
void for_each_chunk(int64_t n, int64_t d, int64_t elems_per_feature, Task task) {
  const Chunking ch = chunking(n, d);
  const int64_t tasks = n * ch.count;
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
void reduce_rows(int64_t n, int64_t d, const std::vector<A>& partial, A* loss, Scale scale) {
  const int64_t chunks = chunking(n, d).count;
  for (int64_t i = 0; i < n; ++i) {
    A total = 0;
    for (int64_t c = 0; c < chunks; ++c) total += partial[i * chunks + c];
    loss[i] = scale(i) * total;
  }
}

// Mean: also write tbar (only when s needs a gradient).
template <typename T, bool Contig, bool Mean>
void child_mse_fwd_impl(const ChildMseParams& p) {
  using A = acc_t<T>;
  const T* s = static_cast<const T*>(p.s);
  const T* t = static_cast<const T*>(p.t);
  const A* w = static_cast<const A*>(p.w);
  A* tbar = static_cast<A*>(p.tbar);
  const int64_t s_sd = fstride<Contig>(p.s_sd), t_sd = fstride<Contig>(p.t_sd);
  std::vector<A> partial(p.n * chunking(p.n, p.d).count);

  for_each_chunk(p.n, p.d, p.k, [&](int64_t i, int64_t d0, int64_t len, int64_t slot) {
    const A* wi = w + i * p.w_sn;
    const A total = weight_sum(wi, p.k, p.w_sk);
    A* tb = Mean ? tbar + i * p.d + d0 : nullptr;
    if (!(total > A(0))) {
      if (Mean) std::fill(tb, tb + len, A(0));
      partial[slot] = 0;
      return;
    }
    A sv[kChunk], err[kChunk], mean[kChunk];
    const T* si = s + i * p.s_sn + d0 * s_sd;
    for (int64_t j = 0; j < len; ++j) {
      sv[j] = load(si + j * s_sd);
      err[j] = 0;
      mean[j] = 0;
    }
    for (int64_t c = 0; c < p.k; ++c) {
      const A wk = wi[c * p.w_sk];
      if (wk == A(0)) continue;  // masked children are never read
      const T* tk = t + i * p.t_sn + c * p.t_sk + d0 * t_sd;
      for (int64_t j = 0; j < len; ++j) {
        const A tv = load(tk + j * t_sd);
        err[j] += wk * sq(tv - sv[j]);
        if (Mean) mean[j] += wk * tv;
      }
    }
    if (Mean) {
      const A inv_total = A(1) / total;
      for (int64_t j = 0; j < len; ++j) tb[j] = mean[j] * inv_total;
    }
    partial[slot] = sum_chunk(err, len);
  });
  reduce_rows(p.n, p.d, partial, static_cast<A*>(p.loss), [&](int64_t i) {
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

  for_each_chunk(p.n, p.d, p.k, [&](int64_t i, int64_t d0, int64_t len, int64_t) {
    const A* wi = w + i * p.w_sn;
    const A total = weight_sum(wi, p.k, p.w_sk);
    const A g_scale = grad[i] * child_mse_scale(total, p.d);
    const T* si = s + i * p.s_sn + d0 * s_sd;
    const A* tb = ds != nullptr ? tbar + i * p.d + d0 : nullptr;
    T* dsi = ds != nullptr ? ds + i * p.d + d0 : nullptr;
    A sv[kChunk];
    for (int64_t j = 0; j < len; ++j) sv[j] = load(si + j * s_sd);
    if (ds != nullptr) {
      for (int64_t j = 0; j < len; ++j) store(dsi + j, child_mse_grad_s(g_scale * total, sv[j], tb[j]));
    }
    if (dt == nullptr) return;
    for (int64_t c = 0; c < p.k; ++c) {
      const A gw = g_scale * wi[c * p.w_sk];
      const T* tk = t + i * p.t_sn + c * p.t_sk + d0 * t_sd;
      T* dtk = dt + (i * p.k + c) * p.d + d0;
      for (int64_t j = 0; j < len; ++j) store(dtk + j, child_mse_grad_t(gw, A(load(tk + j * t_sd)), sv[j]));
    }
  });
}

// m[0:len] = mean of S over child k's block, features d0..d0+len.
template <typename T, typename A, bool Contig>
inline void block_mean(const BlockMseParams& p, const T* Si, int64_t k, int64_t d0, int64_t len,
                       A* m) {
  const int64_t b = p.g / p.r, S_sd = fstride<Contig>(p.S_sd);
  int64_t y0, x0;
  child_block_origin(k, p.r, b, &y0, &x0);
  for (int64_t j = 0; j < len; ++j) m[j] = 0;
  for (int64_t y = y0; y < y0 + b; ++y) {
    for (int64_t x = x0; x < x0 + b; ++x) {
      const T* cell = Si + y * p.S_sy + x * p.S_sx + d0 * S_sd;
      for (int64_t j = 0; j < len; ++j) m[j] += load(cell + j * S_sd);
    }
  }
  const A inv_area = A(1) / A(b * b);
  for (int64_t j = 0; j < len; ++j) m[j] *= inv_area;
}

template <typename T, bool Contig>
void block_mse_fwd_impl(const BlockMseParams& p) {
  using A = acc_t<T>;
  const T* S = static_cast<const T*>(p.S);
  const T* t = static_cast<const T*>(p.t);
  const int64_t k = p.r * p.r, t_sd = fstride<Contig>(p.t_sd);
  std::vector<A> partial(p.n * chunking(p.n, p.d).count);

  for_each_chunk(p.n, p.d, p.g * p.g + k, [&](int64_t i, int64_t d0, int64_t len, int64_t slot) {
    const uint8_t* vi = p.valid + i * p.v_sn;
    A m[kChunk], err[kChunk];
    for (int64_t j = 0; j < len; ++j) err[j] = 0;
    for (int64_t c = 0; c < k; ++c) {
      if (!vi[c * p.v_sk]) continue;  // invalid children are never read
      block_mean<T, A, Contig>(p, S + i * p.S_sn, c, d0, len, m);
      const T* tk = t + i * p.t_sn + c * p.t_sk + d0 * t_sd;
      for (int64_t j = 0; j < len; ++j) err[j] += sq(m[j] - A(load(tk + j * t_sd)));
    }
    partial[slot] = sum_chunk(err, len);
  });
  reduce_rows(p.n, p.d, partial, static_cast<A*>(p.loss), [&](int64_t i) {
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

  for_each_chunk(p.n, p.d, p.g * p.g + k, [&](int64_t i, int64_t d0, int64_t len, int64_t) {
    const uint8_t* vi = p.valid + i * p.v_sn;
    const A g_scale = grad[i] * block_mse_scale<A>(count_valid(vi, k, p.v_sk), p.d);
    A gm[kChunk];
    for (int64_t c = 0; c < k; ++c) {
      const bool valid = vi[c * p.v_sk] != 0;
      if (valid) {
        block_mean<T, A, Contig>(p, S + i * p.S_sn, c, d0, len, gm);
        const T* tk = t + i * p.t_sn + c * p.t_sk + d0 * t_sd;
        for (int64_t j = 0; j < len; ++j) gm[j] = block_mse_grad_m(g_scale, gm[j], A(load(tk + j * t_sd)));
      } else {
        for (int64_t j = 0; j < len; ++j) gm[j] = 0;
      }
      if (dt != nullptr) {
        T* dtk = dt + (i * k + c) * p.d + d0;
        for (int64_t j = 0; j < len; ++j) store(dtk + j, -gm[j]);
      }
      for (int64_t j = 0; j < len; ++j) gm[j] *= inv_area;
      int64_t y0, x0;
      child_block_origin(c, p.r, b, &y0, &x0);
      for (int64_t y = y0; y < y0 + b; ++y) {
        for (int64_t x = x0; x < x0 + b; ++x) {
          T* cell = dS + ((i * p.g + y) * p.g + x) * p.d + d0;
          for (int64_t j = 0; j < len; ++j) store(cell + j, gm[j]);
        }
      }
    }
  });
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
