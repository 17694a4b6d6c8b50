// Types and helpers shared by the CPU and CUDA kernels. Torch-free: kernels see raw pointers,
// sizes and strides in elements, a dtype code and (on CUDA) a stream.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define LRMIL_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define LRMIL_HD inline __attribute__((always_inline))
#else
#define LRMIL_HD inline
#endif

// CPU hot loops: LRMIL_CLONES compiles a function for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 +
// FMA) and the build's baseline (SSE2 on x86-64) and picks one when the library loads (GCC
// target_clones, an ifunc), so the build needs no -march flag and still runs everywhere. The
// per-element helpers (LRMIL_HD, LRMIL_INLINE) are always inlined, so each clone compiles them
// for its own instruction set: a call out to a baseline copy would undo the clone (the gate's
// exp/tanh/sigmoid ran 5x slower that way). Results can differ between instruction sets in the
// last bits (vector width changes the order of in-register partial sums); on one machine they
// are bit-identical run to run and for any thread count.
#if !defined(__CUDACC__) && defined(__x86_64__) && defined(__linux__) && defined(__has_attribute)
#if __has_attribute(target_clones) && defined(__clang__)
#define LRMIL_CLONES __attribute__((target_clones("avx2", "default")))
#elif __has_attribute(target_clones)
#define LRMIL_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#endif
#if !defined(LRMIL_CLONES)
#define LRMIL_CLONES
#endif
#if defined(__GNUC__)
#define LRMIL_INLINE inline __attribute__((always_inline))
#else
#define LRMIL_INLINE inline
#endif

namespace lrmil {

// Dtype codes, matched by lrmil/ops/_ext.py.
enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2, Float64 = 3 };

struct alignas(2) Half { uint16_t bits; };
struct alignas(2) BFloat16 { uint16_t bits; };

LRMIL_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

LRMIL_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

LRMIL_HD float half_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    // Subnormal: normalise.
    int e = -1;
    do { man <<= 1; ++e; } while (!(man & 0x400u));
    return bits_to_float(sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13));
  }
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
#endif
}

LRMIL_HD uint16_t float_to_half(float f) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rn(f));
#else
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t absu = u & 0x7fffffffu;
  if (absu >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (absu > 0x7f800000u ? 0x200u : 0));
  if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to inf
  if (absu < 0x38800000u) {                                     // subnormal or zero
    if (absu < 0x33000000u) return (uint16_t)sign;
    const uint32_t e = absu >> 23;
    const uint32_t man = (absu & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t h = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return (uint16_t)(sign | h);
  }
  uint32_t h = ((absu - 0x38000000u) >> 13);
  const uint32_t rem = absu & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return (uint16_t)(sign | h);
#endif
}

LRMIL_HD float bf16_to_float(uint16_t b) { return bits_to_float((uint32_t)b << 16); }

LRMIL_HD uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  // quiet nan
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);                 // round to nearest even
}

// Loads and stores in the accumulation type of each storage type: fp32 for the 16-bit types
// and fp32, fp64 for fp64 (so that float64 gradcheck checks the real math).
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

LRMIL_HD float load(const float* p) { return *p; }
LRMIL_HD double load(const double* p) { return *p; }
LRMIL_HD float load(const Half* p) { return half_to_float(p->bits); }
LRMIL_HD float load(const BFloat16* p) { return bf16_to_float(p->bits); }

LRMIL_HD void store(float* p, float v) { *p = v; }
LRMIL_HD void store(double* p, double v) { *p = v; }
LRMIL_HD void store(Half* p, float v) { p->bits = float_to_half(v); }
LRMIL_HD void store(BFloat16* p, float v) { p->bits = float_to_bf16(v); }

}  // namespace lrmil

// Calls BODY with `scalar_t` bound to the storage type of DTYPE (a lrmil::DType).
#define LRMIL_DISPATCH_FLOAT_TYPES(DTYPE, NAME, ...)                                   \
  [&] {                                                                              \
    switch (DTYPE) {                                                                 \
      case ::lrmil::DType::Float32: { using scalar_t = float; return __VA_ARGS__(); }  \
      case ::lrmil::DType::Float64: { using scalar_t = double; return __VA_ARGS__(); } \
      case ::lrmil::DType::Float16: { using scalar_t = ::lrmil::Half; return __VA_ARGS__(); } \
      case ::lrmil::DType::BFloat16: {                                               \
        using scalar_t = ::lrmil::BFloat16;                                          \
        return __VA_ARGS__();                                                        \
      }                                                                              \
    }                                                                                \
    throw std::invalid_argument(std::string(NAME) + ": unsupported dtype");          \
  }()
