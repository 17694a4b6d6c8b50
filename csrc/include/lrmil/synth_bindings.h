// Registration hook of the synthetic slide renderer, implemented in csrc/bindings/synth.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace lrmil {
void bind_synth(pybind11::module_& m);
}  // namespace lrmil
