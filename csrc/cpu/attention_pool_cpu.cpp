// Gated attention pooling on the CPU (OpenMP).
//
// Forward: (1) logits, parallel over rows; (2) per-bag max-subtracted softmax over the T scalar
// logits, parallel over bags; (3) pooling, parallel over items of up to kPoolRows rows of a bag,
// so one huge bag still spreads over every core, with x read row after row. proj and x are each
// read once; the only re-read is of the T logits, which is why the CPU splits the online
// softmax into these steps.
// Backward recomputes the gate row by row and keeps only O(T) scalars and O(items * (L + D))
// partial sums.
//
// Every reduction runs in an order fixed by the shapes, never by thread scheduling, so two
// runs give bit-identical results whatever the number of threads.
// FP operations here never trap (no FP exceptions are enabled), and saying so lets GCC turn the
// branches of tanh / sigmoid / exp into selects and vectorise the loops over hidden units.
#pragma GCC optimize("no-trapping-math")

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "lrmil/attention_pool.h"

namespace lrmil {
namespace {

constexpr int64_t kPoolRows = 256;     // rows of one bag per pooling item
constexpr int64_t kRowChunk = 512;     // rows per partial sum of grad_w (fixed: determinism)
// Below this many element operations a call runs on one thread: forking and joining threads
// costs more than it saves on small bags (and much more on a busy machine).
constexpr int64_t kParallelWork = int64_t(1) << 18;

bool worth_threads(const AttentionPoolParams& p) {
  return p.n_rows * (2 * p.hidden + p.dim) >= kParallelWork;
}

// sum_l w_l tanh(v_l) sigmoid(u_l): kept out of the OpenMP region, where GCC vectorises it.
template <typename S>
LRMIL_CLONES acc_t<S> gate_dot(const S* v, const S* u, const acc_t<S>* w, int64_t L) {
  acc_t<S> e = 0;
#pragma omp simd reduction(+ : e)
  for (int64_t l = 0; l < L; ++l) e += gate_term(load(v + l), load(u + l), w[l]);
  return e;
}

template <typename S>
void compute_logits(const AttentionPoolParams& p, acc_t<S>* logits) {
  using A = acc_t<S>;
  const S* proj = static_cast<const S*>(p.proj);
  const A* w = static_cast<const A*>(p.w);
  const A b_w = *static_cast<const A*>(p.b_w);
  const int64_t L = p.hidden;
#pragma omp parallel for schedule(static) if (worth_threads(p))
  for (int64_t t = 0; t < p.n_rows; ++t) {
    const S* v = proj + t * p.proj_row_stride;
    logits[t] = gate_dot(v, v + L, w, L) + b_w;
  }
}

// attn = softmax of the logits within each bag.
template <typename A>
void bag_softmax(const AttentionPoolParams& p, const A* logits, A* attn) {
  const int64_t* offsets = p.offsets;
#pragma omp parallel for schedule(dynamic, 1) if (worth_threads(p))
  for (int64_t b = 0; b < p.n_bags; ++b) {
    const int64_t start = offsets[b], end = offsets[b + 1];
    A max_logit = -INFINITY;
    for (int64_t t = start; t < end; ++t) max_logit = std::max(max_logit, logits[t]);
    const A shift = softmax_shift(max_logit);
    A sum = 0;
    for (int64_t t = start; t < end; ++t) {
      attn[t] = std::exp(logits[t] - shift);
      sum += attn[t];
    }
    const A inv = safe_inverse(sum);
    for (int64_t t = start; t < end; ++t) attn[t] *= inv;
  }
}

// acc = sum over n rows of attn[t] * x[t] (x streamed row after row).
template <typename S>
LRMIL_CLONES void pool_rows(const S* x, int64_t row_stride, const acc_t<S>* attn, int64_t n,
                            int64_t D, acc_t<S>* acc) {
  using A = acc_t<S>;
  std::fill(acc, acc + D, A(0));
  for (int64_t t = 0; t < n; ++t) {
    const A a = attn[t];
    const S* row = x + t * row_stride;
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) acc[j] += a * load(row + j);
  }
}

// Pooling in items of at most kPoolRows rows of one bag, each summing whole rows of x (streamed
// in order) into its own partial; then each bag adds its items' partials in item order. The
// items depend only on the offsets, so the sums do not depend on thread scheduling.
template <typename S>
void pool(const AttentionPoolParams& p, const acc_t<S>* attn) {
  using A = acc_t<S>;
  const S* x = static_cast<const S*>(p.x);
  S* pooled = static_cast<S*>(p.pooled);
  const int64_t D = p.dim;
  std::vector<int64_t> first_item(static_cast<size_t>(p.n_bags + 1), 0);
  for (int64_t b = 0; b < p.n_bags; ++b) {
    const int64_t rows = p.offsets[b + 1] - p.offsets[b];
    first_item[b + 1] = first_item[b] + std::max<int64_t>(1, (rows + kPoolRows - 1) / kPoolRows);
  }
  const int64_t n_items = first_item[p.n_bags];
  std::vector<A> partial(static_cast<size_t>(n_items * D));
#pragma omp parallel for schedule(dynamic, 1) if (worth_threads(p))
  for (int64_t item = 0; item < n_items; ++item) {
    const int64_t b = bag_of_row(first_item.data(), p.n_bags, item);
    const int64_t start = p.offsets[b] + (item - first_item[b]) * kPoolRows;
    const int64_t end = std::min(p.offsets[b + 1], start + kPoolRows);
    pool_rows(x + start * p.x_row_stride, p.x_row_stride, attn + start, end - start, D,
              partial.data() + item * D);
  }
#pragma omp parallel for schedule(static) if (worth_threads(p))
  for (int64_t b = 0; b < p.n_bags; ++b) {
    A* acc = partial.data() + first_item[b] * D;
    for (int64_t item = first_item[b] + 1; item < first_item[b + 1]; ++item) {
      const A* more = partial.data() + item * D;
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) acc[j] += more[j];
    }
    S* out = pooled + b * D;
    for (int64_t j = 0; j < D; ++j) store(out + j, acc[j]);
  }
}

template <typename S>
void forward(const AttentionPoolParams& p) {
  using A = acc_t<S>;
  A* logits = static_cast<A*>(p.logits);
  A* attn = static_cast<A*>(p.attn);
  compute_logits<S>(p, logits);
  bag_softmax(p, logits, attn);
  pool<S>(p, attn);
}

// One row's g . x (returned) and, unless gx is null, gx = a * g.
template <typename S>
LRMIL_CLONES acc_t<S> row_grad(const S* row, const S* g, acc_t<S> a, int64_t D, S* gx) {
  using A = acc_t<S>;
  A dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t j = 0; j < D; ++j) dot += load(g + j) * load(row + j);
  if (gx) {
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) store(gx + j, a * load(g + j));
  }
  return dot;
}

// d(loss)/d(attn_t) including the path through pooled, and grad_x = attn_t * grad_pooled[b]
// unless grad_x is null (x needs no gradient, e.g. cached features).
template <typename S>
void attn_grad_and_grad_x(const AttentionPoolParams& p, acc_t<S>* grad_a) {
  using A = acc_t<S>;
  const S* x = static_cast<const S*>(p.x);
  const S* gp = static_cast<const S*>(p.grad_pooled);
  const A* attn = static_cast<const A*>(p.attn);
  const A* grad_attn = static_cast<const A*>(p.grad_attn);
  S* grad_x = static_cast<S*>(p.grad_x);
  const int64_t D = p.dim;
#pragma omp parallel for schedule(static) if (worth_threads(p))
  for (int64_t t = 0; t < p.n_rows; ++t) {
    const S* g = gp + bag_of_row(p.offsets, p.n_bags, t) * p.grad_pooled_row_stride;
    const A dot = row_grad(x + t * p.x_row_stride, g, attn[t], D, grad_x ? grad_x + t * D : nullptr);
    grad_a[t] = dot + (grad_attn ? grad_attn[t] : A(0));
  }
}

// Softmax backward within each bag, in place: grad_a (d/d attn) becomes d/d logit.
template <typename A>
void bag_softmax_backward(const AttentionPoolParams& p, A* grad) {
  const A* attn = static_cast<const A*>(p.attn);
  const A* grad_logits = static_cast<const A*>(p.grad_logits);
#pragma omp parallel for schedule(dynamic, 1) if (worth_threads(p))
  for (int64_t b = 0; b < p.n_bags; ++b) {
    const int64_t start = p.offsets[b], end = p.offsets[b + 1];
    A weighted = 0;
    for (int64_t t = start; t < end; ++t) weighted += attn[t] * grad[t];
    for (int64_t t = start; t < end; ++t) {
      grad[t] = attn[t] * (grad[t] - weighted) + (grad_logits ? grad_logits[t] : A(0));
    }
  }
}

// n rows of grad_proj (row stride 2L) from the recomputed gate, and their grad_w partials
// gw[0:L] and grad_b_w partial gw[L] (added to gw).
template <typename S>
LRMIL_CLONES void gate_rows_backward(const S* proj, int64_t proj_row_stride, const acc_t<S>* w,
                                     const acc_t<S>* grad_logit, int64_t n, int64_t L,
                                     S* grad_proj, acc_t<S>* gw) {
  using A = acc_t<S>;
  for (int64_t t = 0; t < n; ++t) {
    const A de = grad_logit[t];
    const S* v = proj + t * proj_row_stride;
    const S* u = v + L;
    S* gv = grad_proj + t * 2 * L;
    S* gu = gv + L;
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) {
      const GateGrad<A> g = gate_term_grad(load(v + l), load(u + l), w[l], de);
      store(gv + l, g.dv);
      store(gu + l, g.du);
      gw[l] += de * g.gate;
    }
    gw[L] += de;
  }
}

// grad_proj row by row from the recomputed gate; grad_w and grad_b_w from per-chunk partials
// summed in chunk order.
template <typename S>
void gate_backward(const AttentionPoolParams& p, const acc_t<S>* grad_logit) {
  using A = acc_t<S>;
  const S* proj = static_cast<const S*>(p.proj);
  const A* w = static_cast<const A*>(p.w);
  S* grad_proj = static_cast<S*>(p.grad_proj);
  const int64_t L = p.hidden;
  const int64_t chunks = (p.n_rows + kRowChunk - 1) / kRowChunk;
  std::vector<A> partial(static_cast<size_t>(chunks * (L + 1)), A(0));
#pragma omp parallel for schedule(dynamic, 1) if (worth_threads(p))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t first = c * kRowChunk, n = std::min(p.n_rows, first + kRowChunk) - first;
    gate_rows_backward(proj + first * p.proj_row_stride, p.proj_row_stride, w, grad_logit + first,
                       n, L, grad_proj + first * 2 * L, partial.data() + c * (L + 1));
  }
  A* grad_w = static_cast<A*>(p.grad_w);
  A* grad_b_w = static_cast<A*>(p.grad_b_w);
  std::fill(grad_w, grad_w + L, A(0));
  *grad_b_w = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    const A* gw = partial.data() + c * (L + 1);
    for (int64_t l = 0; l < L; ++l) grad_w[l] += gw[l];
    *grad_b_w += gw[L];
  }
}

template <typename S>
void backward(const AttentionPoolParams& p) {
  using A = acc_t<S>;
  std::vector<A> grad(static_cast<size_t>(p.n_rows));
  attn_grad_and_grad_x<S>(p, grad.data());
  bag_softmax_backward(p, grad.data());
  gate_backward<S>(p, grad.data());
}

}  // namespace

void attention_pool_forward_cpu(const AttentionPoolParams& p) {
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "attention_pool_forward_cpu", [&] { forward<scalar_t>(p); });
}

void attention_pool_backward_cpu(const AttentionPoolParams& p) {
  LRMIL_DISPATCH_FLOAT_TYPES(p.dtype, "attention_pool_backward_cpu", [&] { backward<scalar_t>(p); });
}

}  // namespace lrmil
