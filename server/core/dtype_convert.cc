#include "server/core/dtype_convert.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnd::server {

absl::StatusOr<kernels::DType> FromProtoDType(v1::DType dtype, absl::string_view field) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32: return kernels::DType::kFloat32;
    case v1::DTYPE_FLOAT16: return kernels::DType::kFloat16;
    case v1::DTYPE_BFLOAT16: return kernels::DType::kBFloat16;
    case v1::DTYPE_FLOAT8_E4M3: return kernels::DType::kFloat8E4M3;
    case v1::DTYPE_FLOAT8_E5M2: return kernels::DType::kFloat8E5M2;
    default: break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, "=", ProtoDTypeName(dtype), " is not a valid element type"));
}

v1::DType ToProtoDType(kernels::DType dtype) {
  switch (dtype) {
    case kernels::DType::kFloat32: return v1::DTYPE_FLOAT32;
    case kernels::DType::kFloat16: return v1::DTYPE_FLOAT16;
    case kernels::DType::kBFloat16: return v1::DTYPE_BFLOAT16;
    case kernels::DType::kFloat8E4M3: return v1::DTYPE_FLOAT8_E4M3;
    case kernels::DType::kFloat8E5M2: return v1::DTYPE_FLOAT8_E5M2;
  }
  return v1::DTYPE_UNSPECIFIED;
}

std::string ProtoDTypeName(int dtype) {
  if (v1::DType_IsValid(dtype)) return v1::DType_Name(static_cast<v1::DType>(dtype));
  return absl::StrCat(dtype);
}

}  // namespace attnd::server
