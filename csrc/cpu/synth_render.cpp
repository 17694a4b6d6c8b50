// The synthetic slide renderer: a box of level 0 from the scene (docs/synth.md, "How a slide is
// drawn"). The box is rendered with a margin wide enough for every nucleus that touches it, and
// every value is a function of global pixel coordinates (hashed lattices), so neighbouring boxes
// agree at their seams and the result does not depend on how a slide is cut into boxes or on
// which thread renders which box. One call is single-threaded: callers run boxes in parallel.
// No FP exceptions are enabled: saying so lets GCC turn the clamps into selects and vectorise
// the per-pixel row loops.
#pragma GCC optimize("no-trapping-math")

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "lrmil/synth.h"

namespace lrmil {
namespace synth {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr int kCoarse = 8;  // px between samples of the tissue field's smooth part (scene.py)

// splitmix64 of the seed and the keys, as lrmil.synth.noise.hash_uniform: uniform in [0, 1).
inline uint64_t mix(uint64_t h, int64_t key) {
  h ^= static_cast<uint64_t>(key) + kGolden;
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}

inline float to_unit(uint64_t h) { return static_cast<float>(h >> 40) * (1.0f / 16777216.0f); }

inline float hash2(uint64_t seed, int64_t a, int64_t b) {
  return to_unit(mix(mix(seed * kGolden, a), b));
}

inline float lattice_value(const Noise& noise, int64_t jy, int64_t jx) {
  return hash2(noise.seed, jy, jx) * 2.0f - 1.0f;
}

inline float smooth(float t) { return t * t * (3.0f - 2.0f * t); }

// Lattice node left of each coordinate and the weight of the right node.
struct Axis {
  int64_t first = 0;  // node of the first coordinate
  int nodes = 0;      // nodes spanned, the right neighbour of the last one included
  std::vector<int> index;
  std::vector<float> weight;
};

Axis make_axis(const std::vector<double>& coords, double spacing, bool smoothed) {
  Axis axis;
  const size_t n = coords.size();
  axis.index.resize(n);
  axis.weight.resize(n);
  axis.first = static_cast<int64_t>(std::floor(coords.front() / spacing));
  for (size_t k = 0; k < n; ++k) {
    const double f = coords[k] / spacing;
    const double i = std::floor(f);
    const float t = static_cast<float>(f - i);
    axis.index[k] = static_cast<int>(static_cast<int64_t>(i) - axis.first);
    axis.weight[k] = smoothed ? smooth(t) : t;
  }
  axis.nodes = axis.index.back() + 2;
  return axis;
}

std::vector<double> pixel_coords(int64_t start, int n) {
  std::vector<double> coords(n);
  for (int k = 0; k < n; ++k) coords[k] = static_cast<double>(start + k);
  return coords;
}

// Interpolate node values `values` (ay.nodes x ax.nodes) to the grid: x first on the node rows,
// then y, as lrmil.synth.noise.interpolate. `out` is (ay.index.size(), ax.index.size()).
void interpolate(const std::vector<float>& values, const Axis& ax, const Axis& ay, float* out) {
  const size_t nx = ax.index.size(), ny = ay.index.size();
  static thread_local std::vector<float> columns;  // kept: no page faults per box
  columns.resize(static_cast<size_t>(ay.nodes) * nx);
  for (int r = 0; r < ay.nodes; ++r) {
    const float* row = values.data() + static_cast<size_t>(r) * ax.nodes;
    float* col = columns.data() + static_cast<size_t>(r) * nx;
    for (size_t k = 0; k < nx; ++k) {
      const float left = row[ax.index[k]];
      col[k] = left + ax.weight[k] * (row[ax.index[k] + 1] - left);
    }
  }
  for (size_t y = 0; y < ny; ++y) {
    const float* top = columns.data() + static_cast<size_t>(ay.index[y]) * nx;
    const float* bottom = top + nx;
    const float t = ay.weight[y];
    float* o = out + y * nx;
    for (size_t k = 0; k < nx; ++k) o[k] = top[k] + t * (bottom[k] - top[k]);
  }
}

// Value noise on the grid ys x xs (row-major (ys, xs)).
void noise_grid(const Noise& noise, const std::vector<double>& xs, const std::vector<double>& ys,
                float* out) {
  const Axis ax = make_axis(xs, noise.scale, true), ay = make_axis(ys, noise.scale, true);
  std::vector<float> values(static_cast<size_t>(ay.nodes) * ax.nodes);
  for (int r = 0; r < ay.nodes; ++r)
    for (int c = 0; c < ax.nodes; ++c)
      values[static_cast<size_t>(r) * ax.nodes + c] =
          lattice_value(noise, ay.first + r, ax.first + c);
  interpolate(values, ax, ay, out);
}

// Value noise at one pixel.
float noise_at(const Noise& noise, double x, double y) {
  const double fx = x / noise.scale, fy = y / noise.scale;
  const double ix = std::floor(fx), iy = std::floor(fy);
  const float tx = smooth(static_cast<float>(fx - ix)), ty = smooth(static_cast<float>(fy - iy));
  const int64_t jx = static_cast<int64_t>(ix), jy = static_cast<int64_t>(iy);
  const float v00 = lattice_value(noise, jy, jx), v01 = lattice_value(noise, jy, jx + 1);
  const float v10 = lattice_value(noise, jy + 1, jx), v11 = lattice_value(noise, jy + 1, jx + 1);
  const float top = v00 + tx * (v01 - v00), bottom = v10 + tx * (v11 - v10);
  return top + ty * (bottom - top);
}

// The tissue fraction on the grid ys x xs (pixel coordinates), as Scene.tissue: island
// ellipses plus two octaves of noise, sampled every kCoarse px and interpolated linearly, the
// ragged edge added at full resolution, small holes cut out. Returns false, leaving `out`
// untouched, when the coarse samples already say the grid is all glass (most of a slide).
bool tissue_grid(const Scene& s, const std::vector<double>& xs, const std::vector<double>& ys,
                 float* out) {
  const Axis ax = make_axis(xs, kCoarse, false), ay = make_axis(ys, kCoarse, false);
  std::vector<double> node_x(ax.nodes), node_y(ay.nodes);
  for (int c = 0; c < ax.nodes; ++c) node_x[c] = static_cast<double>((ax.first + c) * kCoarse);
  for (int r = 0; r < ay.nodes; ++r) node_y[r] = static_cast<double>((ay.first + r) * kCoarse);
  const size_t nodes = static_cast<size_t>(ax.nodes) * ay.nodes;
  std::vector<float> body(nodes, -1.0f), coarse(nodes), edge(nodes), holes(nodes);
  for (const Island& island : s.islands) {
    // Beyond 1.3 semi-axes, noise cannot lift the field into tissue: skip far islands.
    const double far = 1.3 * std::max(island.a, island.b);
    const double dx = std::max({node_x.front() - island.cx, island.cx - node_x.back(), 0.0});
    const double dy = std::max({node_y.front() - island.cy, island.cy - node_y.back(), 0.0});
    if (dx * dx + dy * dy > far * far) continue;
    const float c = static_cast<float>(std::cos(island.angle));
    const float sn = static_cast<float>(std::sin(island.angle));
    const float cx = static_cast<float>(island.cx), cy = static_cast<float>(island.cy);
    const float a = static_cast<float>(island.a), b = static_cast<float>(island.b);
    for (int r = 0; r < ay.nodes; ++r) {
      const float y = static_cast<float>(node_y[r]) - cy;
      float* row = body.data() + static_cast<size_t>(r) * ax.nodes;
      for (int k = 0; k < ax.nodes; ++k) {
        const float x = static_cast<float>(node_x[k]) - cx;
        const float u = (x * c + y * sn) / a, v = (y * c - x * sn) / b;
        row[k] = std::max(row[k], 1.0f - u * u - v * v);
      }
    }
  }
  noise_grid(s.coarse, node_x, node_y, coarse.data());
  noise_grid(s.edge, node_x, node_y, edge.data());
  noise_grid(s.holes, node_x, node_y, holes.data());
  for (size_t k = 0; k < nodes; ++k) body[k] += 0.45f * coarse[k] + 0.15f * edge[k];
  // Interpolation stays within the samples and the ragged edge adds at most 0.04: below
  // -0.5 / 30 - 0.04 everywhere, every pixel's tissue is 0.
  if (*std::max_element(body.begin(), body.end()) < -0.5f / 30.0f - 0.04f) return false;
  const size_t n = xs.size() * ys.size();
  static thread_local std::vector<float> ragged, hole;
  ragged.resize(n);
  hole.resize(n);
  interpolate(body, ax, ay, out);
  interpolate(holes, ax, ay, hole.data());
  noise_grid(s.ragged, xs, ys, ragged.data());
  for (size_t k = 0; k < n; ++k) {
    const float t = std::clamp((out[k] + 0.04f * ragged[k]) * 30.0f + 0.5f, 0.0f, 1.0f);
    out[k] = t * (1.0f - std::clamp((hole[k] - 0.62f) * 12.0f, 0.0f, 1.0f));
  }
  return true;
}

// Per-pixel maps of the padded grid (fibre: of the box itself), kept per thread between boxes
// so that their pages are not faulted in again for every box.
struct Work {
  std::vector<float> tissue, edge, hema, in_region, eosin, fibre;
  std::vector<float> density[3];  // per region kind: nucleus acceptance probability
};

// Region maps (regions have noise-warped outlines with a ~3 px soft edge): per kind the nucleus
// acceptance probability, the union of the regions and the eosin factor. Returns per kind
// whether any pixel of the grid may accept a nucleus.
void region_maps(const Scene& s, int64_t gx0, int64_t gy0, int W, int H, Work& w, bool any[3]) {
  for (int k = 0; k < 3; ++k) any[k] = false;
  for (const Region& region : s.regions) {
    const double reach = region.radius * 1.3 + 2;
    const int x_lo = static_cast<int>(std::clamp(std::ceil(region.x - reach - gx0), 0.0, 1.0 * W));
    const int x_hi = static_cast<int>(std::clamp(std::ceil(region.x + reach - gx0), 0.0, 1.0 * W));
    const int y_lo = static_cast<int>(std::clamp(std::ceil(region.y - reach - gy0), 0.0, 1.0 * H));
    const int y_hi = static_cast<int>(std::clamp(std::ceil(region.y + reach - gy0), 0.0, 1.0 * H));
    if (x_lo >= x_hi || y_lo >= y_hi) continue;
    const float r = static_cast<float>(region.radius);
    const float rx = static_cast<float>(region.x), ry = static_cast<float>(region.y);
    const float density = static_cast<float>(region.density);
    const float eosin = static_cast<float>(region.eosin);
    float* dens = w.density[region.kind].data();
    for (int y = y_lo; y < y_hi; ++y) {
      const float dy = static_cast<float>(gy0 + y) - ry;
      for (int x = x_lo; x < x_hi; ++x) {
        const size_t p = static_cast<size_t>(y) * W + x;
        const float dx = static_cast<float>(gx0 + x) - rx;
        const float d = std::sqrt(dx * dx + dy * dy) / r + 0.2f * w.edge[p];
        const float m = std::clamp((1.0f - d) * r / 3.0f + 0.5f, 0.0f, 1.0f) * w.tissue[p];
        dens[p] = std::max(dens[p], m * density);
        w.in_region[p] = std::max(w.in_region[p], m);
        w.eosin[p] += m * (eosin - w.eosin[p]);
        any[region.kind] = any[region.kind] || m * density > 0.0f;
      }
    }
  }
}

// Max-composite the nuclei of one population whose jittered lattice site passes `accept(cx,
// cy)` (grid coordinates) into the hematoxylin canvas (H x W, top-left at global (gx0, gy0)).
template <typename Accept>
void stamp_nuclei(const Scene& s, const Population& pop, int64_t gx0, int64_t gy0, int W, int H,
                  float* hema, Accept accept) {
  const double g = pop.spacing;
  const int size = pop.size, half = size / 2;
  const int64_t jx_lo = static_cast<int64_t>(std::floor(gx0 / g)) - 1;
  const int64_t jx_hi = static_cast<int64_t>(std::ceil((gx0 + W) / g)) + 1;
  const int64_t jy_lo = static_cast<int64_t>(std::floor(gy0 / g)) - 1;
  const int64_t jy_hi = static_cast<int64_t>(std::ceil((gy0 + H) / g)) + 1;
  const uint64_t base = mix(s.seed * kGolden, pop.id);
  uint64_t channel[4];
  for (int c = 0; c < 4; ++c) channel[c] = mix(base, c);
  for (int64_t jy = jy_lo; jy < jy_hi; ++jy) {
    for (int64_t jx = jx_lo; jx < jx_hi; ++jx) {
      float u[4];
      for (int c = 0; c < 4; ++c) u[c] = to_unit(mix(mix(channel[c], jy), jx));
      const int64_t cx = static_cast<int64_t>(std::nearbyint(
                             (static_cast<double>(jx) + 0.5 + 0.8f * (u[0] - 0.5f)) * g)) - gx0;
      const int64_t cy = static_cast<int64_t>(std::nearbyint(
                             (static_cast<double>(jy) + 0.5 + 0.8f * (u[1] - 0.5f)) * g)) - gy0;
      if (cx < half || cx >= W - half || cy < half || cy >= H - half) continue;
      if (!(u[2] < accept(static_cast<int>(cx), static_cast<int>(cy)))) continue;
      const int which = std::min(static_cast<int>(u[3] * static_cast<float>(pop.count)),
                                 pop.count - 1);
      const float* stamp = pop.stamps.data() + static_cast<size_t>(which) * size * size;
      float* top_left = hema + (cy - half) * W + (cx - half);
      for (int y = 0; y < size; ++y) {
        float* row = top_left + static_cast<size_t>(y) * W;
        const float* src = stamp + static_cast<size_t>(y) * size;
        for (int x = 0; x < size; ++x) row[x] = std::max(row[x], src[x]);
      }
    }
  }
}

// exp(x) for x <= 0 (clamped at -80): 2^n * 2^f, f in [-0.5, 0.5], a degree-6 Taylor
// polynomial (relative error < 2e-7). Branch-free, so GCC vectorises the loops that call it;
// std::exp is a scalar call per value.
inline float fast_exp(float x) {
  const float t = std::max(x, -80.0f) * 1.44269504f;  // log2(e)
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float rounded = t + shifter;
  int32_t n;
  std::memcpy(&n, &rounded, sizeof(n));
  n -= 0x4B400000;  // the shifter's bits
  const float f = (t - (rounded - shifter)) * 0.693147181f;  // ln 2
  const float p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 +
                                                                    f * (1.0f / 120 + f / 720)))));
  const int32_t scale = (n + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &scale, sizeof(two_n));
  return p * two_n;
}

// sin(2 pi z): z reduced to [-1/4, 1/4] by periodicity and symmetry, then a degree-11 odd Taylor
// polynomial (absolute error < 1e-6). Branch-free, like fast_exp.
inline float fast_sin_2pi(float z) {
  const float shifter = 12582912.0f;
  float q = z - ((z + shifter) - shifter);  // in [-1/2, 1/2]
  const float half = q < 0 ? -0.5f : 0.5f;
  q = std::fabs(q) > 0.25f ? half - q : q;  // sin(pi - a) = sin(a)
  const float a = q * 6.28318531f, a2 = a * a;
  const float tail = -1.0f / 5040 + a2 * (1.0f / 362880 - a2 / 39916800);
  return a * (1.0f + a2 * (-1.0f / 6 + a2 * (1.0f / 120 + a2 * tail)));
}

// The per-pixel row loops are also compiled for AVX2 (8 floats a step instead of SSE2's 4),
// picked at load time. Without FMA, so both versions round alike: the same bytes everywhere.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LRMIL_SYNTH_ROW __attribute__((target_clones("avx2", "default")))
#else
#define LRMIL_SYNTH_ROW
#endif

// One row of stain concentrations: stroma fibres as the level sets of a warped smooth noise
// field (cells fill the regions), eosin pushed aside by the nuclei.
LRMIL_SYNTH_ROW void stain_row(const float* __restrict level, const float* __restrict edge,
               const float* __restrict tissue, const float* __restrict nucleus,
               const float* __restrict region, const float* __restrict factor, float h_scale,
               float e_scale, int width, float* __restrict hema, float* __restrict eosin) {
  for (int x = 0; x < width; ++x) {
    float fibre = fast_sin_2pi(12.0f * (level[x] + 0.2f * edge[x]));
    fibre += region[x] * (0.2f - fibre);
    const float nuclear = std::min(nucleus[x], 1.0f);
    eosin[x] = tissue[x] * factor[x] * (0.45f + 0.15f * fibre) * (1.0f - 0.6f * nuclear) * e_scale;
    hema[x] = (nucleus[x] + 0.06f * tissue[x]) * h_scale;
  }
}

// One channel of one row: Beer-Lambert plus sensor grain, clipped to 0..255.
LRMIL_SYNTH_ROW void beer_lambert_row(const float* __restrict hema, const float* __restrict eosin,
                      const float* __restrict noise, float h, float e, float glass, int width,
                      uint8_t* __restrict out) {
  for (int x = 0; x < width; ++x) {
    const float v = fast_exp(-(hema[x] * h + eosin[x] * e)) * glass + noise[x];
    out[x] = static_cast<uint8_t>(static_cast<int>(std::clamp(v, 0.0f, 255.0f)));
  }
}

void glass_box(const Scene& s, int64_t x0, int64_t y0, int width, int height, uint8_t* out) {
  const int tile = s.grain_tile;
  for (int y = 0; y < height; ++y) {
    const uint8_t* glass = s.glass_rgb.data() + static_cast<size_t>((y0 + y) % tile) * tile * 3;
    uint8_t* o = out + static_cast<size_t>(y) * width * 3;
    for (int x = 0, g = static_cast<int>(x0 % tile); x < width;) {  // the tile, wrapped
      const int run = std::min(width - x, tile - g);
      std::memcpy(o + 3 * x, glass + 3 * g, 3 * static_cast<size_t>(run));
      x += run;
      g = 0;
    }
  }
}

}  // namespace

std::vector<uint8_t> glass_tile(const Scene& s) {
  std::vector<uint8_t> rgb(s.grain.size() * 3);
  for (size_t k = 0; k < s.grain.size(); ++k)
    rgb[3 * k] = rgb[3 * k + 1] = rgb[3 * k + 2] =
        static_cast<uint8_t>(std::clamp(s.glass + s.grain[k], 0.0f, 255.0f));
  return rgb;
}

void tissue_box(const Scene& scene, int64_t x0, int64_t y0, int width, int height, float* out) {
  if (!tissue_grid(scene, pixel_coords(x0, width), pixel_coords(y0, height), out))
    std::fill(out, out + static_cast<size_t>(width) * height, 0.0f);
}

void render_box(const Scene& s, int64_t x0, int64_t y0, int width, int height, uint8_t* out) {
  static thread_local Work w;
  const int pad = s.margin, W = width + 2 * pad, H = height + 2 * pad;
  const int64_t gx0 = x0 - pad, gy0 = y0 - pad;
  const size_t n = static_cast<size_t>(W) * H;
  const std::vector<double> xs = pixel_coords(gx0, W), ys = pixel_coords(gy0, H);
  w.tissue.resize(n);
  if (!tissue_grid(s, xs, ys, w.tissue.data()) ||
      std::all_of(w.tissue.begin(), w.tissue.end(), [](float t) { return t == 0.0f; })) {
    glass_box(s, x0, y0, width, height, out);  // most of a slide is glass: skip the stains
    return;
  }
  w.edge.resize(n);
  noise_grid(s.edge, xs, ys, w.edge.data());
  w.in_region.assign(n, 0.0f);
  w.eosin.assign(n, 1.0f);
  for (auto& d : w.density) d.assign(n, 0.0f);
  bool any[3];
  region_maps(s, gx0, gy0, W, H, w, any);

  // Nuclei: normal epithelial and stromal ones in plain tissue, then the regions' own.
  w.hema.assign(n, 0.0f);
  const auto plain = [&](int cx, int cy) {
    const size_t p = static_cast<size_t>(cy) * W + cx;
    const float cellularity = 0.3f + 0.2f * noise_at(s.density, gx0 + cx, gy0 + cy);
    return w.tissue[p] * (1.0f - w.in_region[p]) * cellularity;
  };
  for (int pop : {kNormal, kStroma})
    stamp_nuclei(s, s.populations[pop], gx0, gy0, W, H, w.hema.data(), plain);
  const int population_of[3] = {kTumour, kLymphocyte, kNestCell};
  for (int kind = 0; kind < 3; ++kind) {
    if (!any[kind]) continue;
    const float* dens = w.density[kind].data();
    stamp_nuclei(s, s.populations[population_of[kind]], gx0, gy0, W, H, w.hema.data(),
                 [&](int cx, int cy) { return dens[static_cast<size_t>(cy) * W + cx]; });
  }

  // Stroma: wavy fibres as the level sets of a warped smooth noise field; cells fill regions.
  // Then Beer-Lambert: RGB = I0 * exp(-(cH * h + cE * e)) plus sensor grain.
  w.fibre.resize(static_cast<size_t>(width) * height);
  noise_grid(s.fibre, pixel_coords(x0, width), pixel_coords(y0, height), w.fibre.data());
  const int tile = s.grain_tile;
  std::vector<float> hema(width), eosin(width), noise(width);
  std::vector<uint8_t> planes(3 * static_cast<size_t>(width));
  for (int y = 0; y < height; ++y) {
    const size_t row = static_cast<size_t>(y + pad) * W + pad;
    const float* grain = s.grain.data() + static_cast<size_t>((y0 + y) % tile) * tile;
    for (int x = 0, g = static_cast<int>(x0 % tile); x < width;) {  // the tile, wrapped
      const int run = std::min(width - x, tile - g);
      std::copy_n(grain + g, run, noise.data() + x);
      x += run;
      g = 0;
    }
    stain_row(w.fibre.data() + static_cast<size_t>(y) * width, w.edge.data() + row,
              w.tissue.data() + row, w.hema.data() + row, w.in_region.data() + row,
              w.eosin.data() + row, s.h_scale, s.e_scale, width, hema.data(), eosin.data());
    for (int c = 0; c < 3; ++c)
      beer_lambert_row(hema.data(), eosin.data(), noise.data(), s.h_vector[c], s.e_vector[c],
                       s.glass, width, planes.data() + static_cast<size_t>(c) * width);
    uint8_t* o = out + static_cast<size_t>(y) * width * 3;
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c) o[3 * x + c] = planes[static_cast<size_t>(c) * width + x];
  }
}

void downsample4(const uint8_t* image, int64_t height, int64_t width, int64_t row_stride,
                 uint8_t* out) {
  const int64_t h = height / 4, w = width / 4;
  std::vector<uint32_t> sums(static_cast<size_t>(w) * 3);
  for (int64_t y = 0; y < h; ++y) {
    std::fill(sums.begin(), sums.end(), 0u);
    for (int r = 0; r < 4; ++r) {
      const uint8_t* src = image + (4 * y + r) * row_stride;
      for (int64_t x = 0; x < w; ++x)
        for (int k = 0; k < 12; ++k) sums[3 * x + k % 3] += src[12 * x + k];
    }
    uint8_t* o = out + y * w * 3;
    for (int64_t k = 0; k < w * 3; ++k) o[k] = static_cast<uint8_t>((sums[k] + 8) >> 4);
  }
}

}  // namespace synth
}  // namespace lrmil
