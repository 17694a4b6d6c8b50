// Registration hooks, one per op, implemented in csrc/bindings/<op>.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace lrmil {
void bind_attention_pool(pybind11::module_& m);
void bind_align_loss(pybind11::module_& m);
}  // namespace lrmil
