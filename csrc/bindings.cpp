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

// CUDA versions as CUDA encodes them (1000 * major + 10 * minor); 0 where there is none.
int cuda_build_version() {
#if defined(LRMIL_WITH_CUDA)
  return CUDART_VERSION;
#else
  return 0;
#endif
}

// The runtime library loaded in this process (torch's, where it loaded the same soname first).
int cuda_runtime_version() {
#if defined(LRMIL_WITH_CUDA)
  int v = 0;
  return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
#else
  return 0;
#endif
}

// The newest runtime the installed driver supports; 0 without a driver.
int cuda_driver_version() {
#if defined(LRMIL_WITH_CUDA)
  int v = 0;
  return cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
#else
  return 0;
#endif
}

// Devices lrmil's CUDA runtime sees; 0 without a driver or a GPU.
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
  m.def("cuda_build_version", &cuda_build_version, "CUDA version the kernels were built with.");
  m.def("cuda_runtime_version", &cuda_runtime_version, "CUDA runtime loaded in this process.");
  m.def("cuda_driver_version", &cuda_driver_version, "Newest CUDA the driver supports, or 0.");
  m.def("cuda_device_count", &cuda_device_count, "CUDA devices the module's runtime sees.");
  lrmil::bind_attention_pool(m);
  lrmil::bind_align_loss(m);
  lrmil::bind_synth(m);
}
