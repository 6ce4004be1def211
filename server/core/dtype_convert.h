// Conversions between the wire API's DType (attnd.v1.DType) and the kernels' DType. Every place
// in the core that crosses that boundary goes through these functions.
#pragma once

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "attnd/kernels/types.h"
#include "attnd/v1/attnd.pb.h"

namespace attnd::server {

// INVALID_ARGUMENT naming `field` for DTYPE_UNSPECIFIED or an unknown enum value, e.g.
// "q.dtype=DTYPE_UNSPECIFIED is not a valid element type".
absl::StatusOr<kernels::DType> FromProtoDType(v1::DType dtype, absl::string_view field);

v1::DType ToProtoDType(kernels::DType dtype);

// The wire name of a dtype ("DTYPE_FLOAT16"), or its number for values outside the enum.
std::string ProtoDTypeName(int dtype);

}  // namespace attnd::server
