// The pybind11 module lrmil._C. Each op registers its functions from csrc/bindings/<op>.cpp;
// this file holds the module and the build/device queries.
#include <pybind11/pybind11.h>

#include "lrmil/bindings.h"
#include "lrmil/synth_bindings.h"

#if defined(LRMIL_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace py = pybind11;

namespace {

bool cuda_compiled() {
#if defined(LRMIL_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

std::string cuda_archs() {
#if defined(LRMIL_WITH_CUDA)
  return LRMIL_CUDA_ARCHS;
#else
  return "";
#endif
}

// Devices the statically linked CUDA runtime sees; 0 without a driver or a GPU.
int cuda_device_count() {
#if defined(LRMIL_WITH_CUDA)
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lrmil C++/CUDA core: fused gated attention pooling and cross-resolution alignment";
  m.def("cuda_compiled", &cuda_compiled, "Whether the CUDA kernels were compiled in.");
  m.def("cuda_archs", &cuda_archs, "CUDA architectures compiled for, comma-separated.");
  m.def("cuda_device_count", &cuda_device_count, "CUDA devices the module's runtime sees.");
  lrmil::bind_attention_pool(m);
  lrmil::bind_align_loss(m);
  lrmil::bind_synth(m);
}
