// The synthetic slide renderer (lrmil/synth): one box of a slide's level 0 from its scene, and
// the 4x4 area averaging of the pyramid. Python draws the scene from the seed (scene.py); this
// code turns it into pixels, every pixel a function of its global coordinates only.
#pragma once

#include <cstdint>
#include <vector>

namespace lrmil {
namespace synth {

// Value noise in [-1, 1]: splitmix64-hashed values on a lattice of `scale` px, smooth-step
// interpolated.
struct Noise {
  uint64_t seed = 0;
  double scale = 1.0;
};

struct Island {  // a tissue ellipse
  double cx, cy, a, b, angle;
};

enum RegionKind : int { kFocus = 0, kLymph = 1, kNest = 2 };

struct Region {  // a disc of special tissue; its outline is warped by the edge noise
  int kind;
  double x, y, radius, eosin, density;
};

// A kind of nucleus: sites on a jittered lattice of `spacing` px, drawn from `count` stamps of
// size x size hematoxylin concentration. `id` keys the site hash.
struct Population {
  int64_t id = 0;
  double spacing = 1.0;
  int count = 0;
  int size = 0;
  std::vector<float> stamps;
};

// Population indices, matching the order of Scene.populations in lrmil/synth/scene.py.
enum PopulationIndex : int {
  kNormal = 0,
  kStroma = 1,
  kLymphocyte = 2,
  kNestCell = 3,
  kTumour = 4,
};
constexpr int kPopulations = 5;

struct Scene {
  uint64_t seed = 0;
  Noise coarse, edge, ragged, holes, fibre, density;
  std::vector<Island> islands;
  std::vector<Region> regions;
  Population populations[kPopulations];
  float h_vector[3] = {0, 0, 0}, e_vector[3] = {0, 0, 0};
  float h_scale = 1, e_scale = 1, glass = 255;
  int grain_tile = 1;
  std::vector<float> grain;  // grain_tile^2 sensor noise (grey levels), tiled over the slide
  std::vector<uint8_t> glass_rgb;  // glass_tile(): bare glass, grain_tile^2 RGB pixels
  int margin = 0;            // px rendered around a box: room for every nucleus touching it
};

// The RGB pixels of bare glass over one grain tile (Scene::glass_rgb).
std::vector<uint8_t> glass_tile(const Scene& scene);

// RGB (height, width, 3) of the level-0 box at (x0, y0) into `out`, row-major.
void render_box(const Scene& scene, int64_t x0, int64_t y0, int width, int height, uint8_t* out);

// The tissue fraction in [0, 1] of the box (height, width), as Scene.tissue in Python computes it.
void tissue_box(const Scene& scene, int64_t x0, int64_t y0, int width, int height, float* out);

// Rounded means of 4x4 blocks of an RGB image (rows of `row_stride` bytes, pixels of 3 bytes):
// (height / 4, width / 4, 3) into `out`; trailing rows and columns that do not fill a block are
// dropped.
void downsample4(const uint8_t* image, int64_t height, int64_t width, int64_t row_stride,
                 uint8_t* out);

}  // namespace synth
}  // namespace lrmil
