#include "lrmil/bindings.h"

namespace lrmil {
void bind_attention_pool(pybind11::module_&) {}
}  // namespace lrmil
