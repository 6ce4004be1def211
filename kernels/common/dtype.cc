#include "attnd/kernels/types.h"

namespace attnd::kernels {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat8E4M3: return "float8_e4m3";
  }
  return "unknown";
}

}  // namespace attnd::kernels
