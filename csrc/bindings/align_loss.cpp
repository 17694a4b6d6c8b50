#include "lrmil/bindings.h"

namespace lrmil {
void bind_align_loss(pybind11::module_&) {}
}  // namespace lrmil
