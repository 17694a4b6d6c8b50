// Python entry points of the synthetic slide renderer (lrmil/synth/render.py and tiff.py).
// A SlideRenderer holds a copy of the scene, checked once; render() and downsample4() release
// the GIL, so Python threads render boxes and average bands in parallel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "lrmil/synth.h"
#include "lrmil/synth_bindings.h"

namespace py = pybind11;

namespace lrmil {
namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("synth: " + what);
}

std::vector<float> floats(const FloatArray& a) { return {a.data(), a.data() + a.size()}; }

synth::Noise to_noise(const std::pair<uint64_t, double>& noise) {
  require(noise.second > 0, "noise scale must be positive");
  return {noise.first, noise.second};
}

synth::Scene make_scene(uint64_t seed, const std::vector<std::pair<uint64_t, double>>& noises,
                        const DoubleArray& islands, const DoubleArray& regions,
                        const std::vector<double>& spacings, const std::vector<FloatArray>& stamps,
                        const FloatArray& h_vector, const FloatArray& e_vector, float h_scale,
                        float e_scale, float glass, const FloatArray& grain, int margin) {
  require(noises.size() == 6, "six noises: coarse, edge, ragged, holes, fibre, density");
  require(islands.ndim() == 2 && islands.shape(1) == 5, "islands must be (n, 5)");
  require(regions.ndim() == 2 && regions.shape(1) == 6, "regions must be (m, 6)");
  require(spacings.size() == synth::kPopulations && stamps.size() == synth::kPopulations,
          "five populations: normal, stroma, lymph, nest, tumour");
  require(h_vector.size() == 3 && e_vector.size() == 3, "stain vectors have 3 components");
  require(grain.ndim() == 2 && grain.shape(0) == grain.shape(1) && grain.shape(0) > 0,
          "grain must be a square tile");
  require(margin >= 0, "negative margin");
  synth::Scene s;
  s.seed = seed;
  synth::Noise* slots[6] = {&s.coarse, &s.edge, &s.ragged, &s.holes, &s.fibre, &s.density};
  for (int k = 0; k < 6; ++k) *slots[k] = to_noise(noises[k]);
  auto isl = islands.unchecked<2>();
  for (py::ssize_t i = 0; i < isl.shape(0); ++i)
    s.islands.push_back({isl(i, 0), isl(i, 1), isl(i, 2), isl(i, 3), isl(i, 4)});
  auto reg = regions.unchecked<2>();
  for (py::ssize_t i = 0; i < reg.shape(0); ++i) {
    const int kind = static_cast<int>(reg(i, 0));
    require(kind >= 0 && kind < 3 && reg(i, 3) > 0, "region kind in 0..2, radius > 0");
    s.regions.push_back({kind, reg(i, 1), reg(i, 2), reg(i, 3), reg(i, 4), reg(i, 5)});
  }
  for (int p = 0; p < synth::kPopulations; ++p) {
    const FloatArray& bank = stamps[p];
    require(bank.ndim() == 3 && bank.shape(0) > 0 && bank.shape(1) == bank.shape(2) &&
                bank.shape(1) % 2 == 1,
            "stamps must be (K, S, S) with S odd");
    require(spacings[p] > 0, "lattice spacing must be positive");
    require(2 * (bank.shape(1) / 2) + 2 <= margin, "margin narrower than a nucleus");
    synth::Population& pop = s.populations[p];
    pop.id = p;
    pop.spacing = spacings[p];
    pop.count = static_cast<int>(bank.shape(0));
    pop.size = static_cast<int>(bank.shape(1));
    pop.stamps = floats(bank);
  }
  for (int c = 0; c < 3; ++c) {
    s.h_vector[c] = h_vector.data()[c];
    s.e_vector[c] = e_vector.data()[c];
  }
  s.h_scale = h_scale;
  s.e_scale = e_scale;
  s.glass = glass;
  s.grain_tile = static_cast<int>(grain.shape(0));
  s.grain = floats(grain);
  for (float& g : s.grain) g *= 2.0f;  // 2 grey levels per unit of grain
  s.glass_rgb = synth::glass_tile(s);
  s.margin = margin;
  return s;
}

void check_box(int64_t x0, int64_t y0, int width, int height) {
  require(x0 >= 0 && y0 >= 0 && width > 0 && height > 0, "box must be non-empty, at x0, y0 >= 0");
}

py::array_t<uint8_t> render(const synth::Scene& s, int64_t x0, int64_t y0, int width,
                            int height) {
  check_box(x0, y0, width, height);
  py::array_t<uint8_t> out({static_cast<py::ssize_t>(height), static_cast<py::ssize_t>(width),
                            static_cast<py::ssize_t>(3)});
  uint8_t* data = out.mutable_data();
  {
    py::gil_scoped_release release;
    synth::render_box(s, x0, y0, width, height, data);
  }
  return out;
}

py::array_t<float> tissue(const synth::Scene& s, int64_t x0, int64_t y0, int width, int height) {
  check_box(x0, y0, width, height);
  py::array_t<float> out({static_cast<py::ssize_t>(height), static_cast<py::ssize_t>(width)});
  float* data = out.mutable_data();
  {
    py::gil_scoped_release release;
    synth::tissue_box(s, x0, y0, width, height, data);
  }
  return out;
}

py::array_t<uint8_t> downsample4(const py::array_t<uint8_t>& image) {
  require(image.ndim() == 3 && image.shape(2) == 3, "image must be (height, width, 3)");
  require(image.strides(2) == 1 && image.strides(1) == 3 && image.strides(0) > 0,
          "image pixels must be contiguous RGB");
  const int64_t h = image.shape(0) / 4, w = image.shape(1) / 4;
  py::array_t<uint8_t> out({static_cast<py::ssize_t>(h), static_cast<py::ssize_t>(w),
                            static_cast<py::ssize_t>(3)});
  const uint8_t* src = image.data();
  uint8_t* dst = out.mutable_data();
  const int64_t height = image.shape(0), width = image.shape(1), stride = image.strides(0);
  {
    py::gil_scoped_release release;
    synth::downsample4(src, height, width, stride, dst);
  }
  return out;
}

}  // namespace

void bind_synth(py::module_& m) {
  py::class_<synth::Scene>(m, "SynthRenderer",
                           "A slide's scene, ready to render (lrmil/synth/render.py builds it).")
      .def(py::init(&make_scene), py::arg("seed"), py::arg("noises"), py::arg("islands"),
           py::arg("regions"), py::arg("spacings"), py::arg("stamps"), py::arg("h_vector"),
           py::arg("e_vector"), py::arg("h_scale"), py::arg("e_scale"), py::arg("glass"),
           py::arg("grain"), py::arg("margin"))
      .def("render", &render, py::arg("x0"), py::arg("y0"), py::arg("width"), py::arg("height"),
           "RGB uint8 (height, width, 3) of the level-0 box at (x0, y0).")
      .def("tissue", &tissue, py::arg("x0"), py::arg("y0"), py::arg("width"), py::arg("height"),
           "Tissue fraction float32 (height, width) of the box at (x0, y0).");
  m.def("synth_downsample4", &downsample4, py::arg("image"),
        "Rounded means of 4x4 blocks of an RGB uint8 image (height, width, 3).");
}

}  // namespace lrmil
