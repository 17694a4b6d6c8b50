// Argument checks of the bindings. Python validates the user's tensors first; these re-check the
// raw sizes, strides and pointers a binding is handed, so that a wrong call raises ValueError
// (std::invalid_argument through pybind11) instead of reading out of bounds. Messages name the
// op, the tensor and its expected shape, as in causal-conv1d's CHECK_SHAPE.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace lrmil {

// "(5, 4)" from sizes.
inline std::string shape_string(std::initializer_list<int64_t> sizes) {
  std::string out = "(";
  bool first = true;
  for (int64_t s : sizes) {
    out += (first ? "" : ", ") + std::to_string(s);
    first = false;
  }
  return out + (sizes.size() == 1 ? ",)" : ")");
}

[[noreturn]] inline void check_failed(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

inline void check(bool ok, const char* op, const std::string& what) {
  if (!ok) check_failed(op, what);
}

// A tensor `name` of layout `layout` (e.g. "(T, D)") with the given sizes and element strides:
// a non-null pointer unless it is empty, strides >= 0.
inline void check_tensor(const char* op, const char* name, const char* layout, const void* ptr,
                         std::initializer_list<int64_t> sizes,
                         std::initializer_list<int64_t> strides) {
  int64_t numel = 1;
  for (int64_t s : sizes) {
    if (s < 0) check_failed(op, std::string(name) + " " + layout + " has a negative size " + shape_string(sizes));
    numel *= s;
  }
  for (int64_t s : strides) {
    if (s < 0) check_failed(op, std::string(name) + " " + layout + " = " + shape_string(sizes) + " has a negative stride " + shape_string(strides));
  }
  if (numel > 0 && ptr == nullptr) {
    check_failed(op, std::string(name) + " " + layout + " = " + shape_string(sizes) + ": null data pointer");
  }
}

// Rows of `cols` unit-stride elements `row_stride` apart must not overlap.
inline void check_rows(const char* op, const char* name, const char* layout, int64_t rows,
                       int64_t cols, int64_t row_stride) {
  if (rows > 1 && row_stride < cols) {
    check_failed(op, std::string(name) + " " + layout + " = " + shape_string({rows, cols}) +
                         ": row stride " + std::to_string(row_stride) + " < " +
                         std::to_string(cols) + " columns (rows overlap)");
  }
}

inline void check_dtype_code(const char* op, int code) {
  check(code >= 0 && code <= 3, op, "unknown dtype code " + std::to_string(code));
}

}  // namespace lrmil
