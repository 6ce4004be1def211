#include "attnd/client/tensor.h"

#include <cstring>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attnd/kernels/float_convert.h"
#include "attnd/kernels/types.h"

namespace attnd::client {
namespace {

// The wire dtype as the kernels' element type, or nullopt for unspecified/unknown values.
std::optional<kernels::DType> ToKernelDType(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32: return kernels::DType::kFloat32;
    case v1::DTYPE_FLOAT16: return kernels::DType::kFloat16;
    case v1::DTYPE_BFLOAT16: return kernels::DType::kBFloat16;
    case v1::DTYPE_FLOAT8_E4M3: return kernels::DType::kFloat8E4M3;
    case v1::DTYPE_FLOAT8_E5M2: return kernels::DType::kFloat8E5M2;
    default: return std::nullopt;
  }
}

absl::Status UnknownDType(v1::DType dtype) {
  return absl::InvalidArgumentError(
      absl::StrCat("dtype=", static_cast<int>(dtype), " is not a known element type"));
}

}  // namespace

size_t DTypeSize(v1::DType dtype) {
  const auto kind = ToKernelDType(dtype);
  return kind ? kernels::DTypeSize(*kind) : 0;
}

const char* DTypeName(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32: return "float32";
    case v1::DTYPE_FLOAT16: return "float16";
    case v1::DTYPE_BFLOAT16: return "bfloat16";
    case v1::DTYPE_FLOAT8_E4M3: return "float8_e4m3";
    case v1::DTYPE_UNSPECIFIED: return "unspecified";
    default: return "unknown";
  }
}

int64_t NumElements(std::span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d < 0 ? 0 : d;
  return n;
}

float RoundToDType(v1::DType dtype, float value) {
  const auto kind = ToKernelDType(dtype);
  return kind ? kernels::RoundTo(*kind, value) : value;
}

void RoundToDType(v1::DType dtype, std::span<float> values) {
  const auto kind = ToKernelDType(dtype);
  if (!kind) return;
  for (float& v : values) v = kernels::RoundTo(*kind, v);
}

absl::Status EncodeFloats(std::span<const float> values, v1::DType dtype, std::span<char> out) {
  const auto kind = ToKernelDType(dtype);
  if (!kind) return UnknownDType(dtype);
  const size_t elem = kernels::DTypeSize(*kind);
  if (out.size() != values.size() * elem) {
    return absl::InvalidArgumentError(absl::StrCat("output holds ", out.size(), " bytes, ",
                                                   values.size(), " elements of ", DTypeName(dtype),
                                                   " need ", values.size() * elem));
  }
  // StoreFromFloat writes through a typed pointer: encode into an aligned scratch element and
  // copy bytes, so `out` needs no particular alignment.
  for (size_t i = 0; i < values.size(); ++i) {
    alignas(4) char element[4];
    kernels::StoreFromFloat(element, *kind, 0, values[i]);
    std::memcpy(out.data() + i * elem, element, elem);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> DecodeFloats(std::span<const char> bytes, v1::DType dtype) {
  const auto kind = ToKernelDType(dtype);
  if (!kind) return UnknownDType(dtype);
  const size_t elem = kernels::DTypeSize(*kind);
  if (bytes.size() % elem != 0) {
    return absl::InvalidArgumentError(absl::StrCat(bytes.size(), " bytes is not a whole number of ",
                                                   DTypeName(dtype), " elements"));
  }
  std::vector<float> values(bytes.size() / elem);
  for (size_t i = 0; i < values.size(); ++i) {
    alignas(4) char element[4];
    std::memcpy(element, bytes.data() + i * elem, elem);
    values[i] = kernels::LoadAsFloat(element, *kind, 0);
  }
  return values;
}

absl::StatusOr<v1::Tensor> MakeTensor(std::span<const float> values, std::vector<int64_t> shape,
                                      v1::DType dtype) {
  const int64_t count = NumElements(shape);
  if (static_cast<int64_t>(values.size()) != count) {
    return absl::InvalidArgumentError(absl::StrCat("MakeTensor: ", values.size(),
                                                   " values for shape [", absl::StrJoin(shape, ","),
                                                   "] (", count, " elements)"));
  }
  const size_t elem = DTypeSize(dtype);
  if (elem == 0) return UnknownDType(dtype);
  std::string bytes(values.size() * elem, '\0');
  if (auto s = EncodeFloats(values, dtype, std::span<char>(bytes.data(), bytes.size())); !s.ok()) {
    return s;
  }
  v1::Tensor tensor;
  tensor.set_dtype(dtype);
  for (int64_t d : shape) tensor.add_shape(d);
  tensor.set_inline_data(std::move(bytes));
  return tensor;
}

absl::StatusOr<v1::Tensor> MakeTensorFromBytes(std::string bytes, std::vector<int64_t> shape,
                                               v1::DType dtype) {
  const size_t elem = DTypeSize(dtype);
  if (elem == 0) return UnknownDType(dtype);
  const uint64_t expected = static_cast<uint64_t>(NumElements(shape)) * elem;
  if (bytes.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MakeTensorFromBytes: ", bytes.size(), " bytes for shape [", absl::StrJoin(shape, ","),
        "] of ", DTypeName(dtype), " (", expected, " bytes)"));
  }
  v1::Tensor tensor;
  tensor.set_dtype(dtype);
  for (int64_t d : shape) tensor.add_shape(d);
  tensor.set_inline_data(std::move(bytes));
  return tensor;
}

absl::StatusOr<v1::Tensor> MakeTensorFromBits16(std::span<const uint16_t> bits,
                                                std::vector<int64_t> shape, v1::DType dtype) {
  if (dtype != v1::DTYPE_FLOAT16 && dtype != v1::DTYPE_BFLOAT16) {
    return absl::InvalidArgumentError(
        absl::StrCat("MakeTensorFromBits16: dtype=", DTypeName(dtype), " is not a 16-bit type"));
  }
  std::string bytes(bits.size() * 2, '\0');
  for (size_t i = 0; i < bits.size(); ++i) {  // little-endian regardless of the host
    bytes[2 * i] = static_cast<char>(bits[i] & 0xff);
    bytes[2 * i + 1] = static_cast<char>(bits[i] >> 8);
  }
  return MakeTensorFromBytes(std::move(bytes), std::move(shape), dtype);
}

absl::StatusOr<std::vector<uint16_t>> TensorToBits16(const v1::Tensor& tensor) {
  if (tensor.dtype() != v1::DTYPE_FLOAT16 && tensor.dtype() != v1::DTYPE_BFLOAT16) {
    return absl::InvalidArgumentError(
        absl::StrCat("TensorToBits16: dtype=", DTypeName(tensor.dtype()), " is not a 16-bit type"));
  }
  if (tensor.data_case() != v1::Tensor::kInlineData) {
    return absl::InvalidArgumentError("TensorToBits16: the tensor has no inline data");
  }
  const std::string& bytes = tensor.inline_data();
  const uint64_t expected =
      2ull * NumElements(std::span<const int64_t>(tensor.shape().data(), tensor.shape().size()));
  if (bytes.size() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("TensorToBits16: ", bytes.size(), " inline bytes, expected ", expected));
  }
  std::vector<uint16_t> bits(bytes.size() / 2);
  for (size_t i = 0; i < bits.size(); ++i) {
    bits[i] = static_cast<uint16_t>(static_cast<unsigned char>(bytes[2 * i]) |
                                    (static_cast<unsigned char>(bytes[2 * i + 1]) << 8));
  }
  return bits;
}

v1::Tensor MakeBufferTensor(const std::string& buffer_id, uint64_t offset_bytes,
                            const std::vector<int64_t>& shape, v1::DType dtype) {
  v1::Tensor tensor;
  tensor.set_dtype(dtype);
  for (int64_t d : shape) tensor.add_shape(d);
  tensor.mutable_buffer()->set_buffer_id(buffer_id);
  tensor.mutable_buffer()->set_offset_bytes(offset_bytes);
  return tensor;
}

absl::StatusOr<std::vector<float>> TensorToFloats(const v1::Tensor& tensor) {
  if (tensor.data_case() != v1::Tensor::kInlineData) {
    return absl::InvalidArgumentError("TensorToFloats: the tensor has no inline data");
  }
  const size_t elem = DTypeSize(tensor.dtype());
  if (elem == 0) return UnknownDType(tensor.dtype());
  const uint64_t expected = static_cast<uint64_t>(NumElements(std::span<const int64_t>(
                                tensor.shape().data(), tensor.shape().size()))) *
                            elem;
  const std::string& bytes = tensor.inline_data();
  if (bytes.size() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("TensorToFloats: ", bytes.size(), " inline bytes for shape [",
                     absl::StrJoin(tensor.shape(), ","), "] of ", DTypeName(tensor.dtype()), " (",
                     expected, " bytes)"));
  }
  return DecodeFloats(std::span<const char>(bytes.data(), bytes.size()), tensor.dtype());
}

}  // namespace attnd::client
