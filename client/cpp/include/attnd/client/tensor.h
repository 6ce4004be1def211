// Helpers to build attnd.v1.Tensor messages from host arrays and to read them back.
//
// A Tensor is row-major and dense: product(shape) elements of dtype, little-endian. Inline tensors
// carry their bytes in the message (remote clients, tests); buffer tensors name a slice of a
// buffer registered with RegisterBuffer (zero-copy on the same host).
//
// Values given as float are rounded to the tensor's dtype with round-to-nearest-even (the
// conversions of attnd/kernels/float_convert.h, the same the daemon uses), so a client that wants
// to compute a reference can round its own copy with RoundToDType() and get bit-identical inputs.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "attnd/v1/attnd.pb.h"

namespace attnd::client {

namespace v1 = ::attnd::v1;

// Bytes per element; 0 for DTYPE_UNSPECIFIED or unknown values.
size_t DTypeSize(v1::DType dtype);
// "float16", "bfloat16", ...; "unspecified" for 0.
const char* DTypeName(v1::DType dtype);
// Product of the dims (1 for a scalar / empty shape). Negative dims count as 0.
int64_t NumElements(std::span<const int64_t> shape);

// Rounds `value` to the nearest value representable in `dtype` (float32: unchanged).
float RoundToDType(v1::DType dtype, float value);
// Rounds every element in place.
void RoundToDType(v1::DType dtype, std::span<float> values);

// An inline tensor of `shape` whose elements are `values` converted to `dtype` (fp32, fp16,
// bf16 or fp8 e4m3). INVALID_ARGUMENT if values.size() != product(shape) or dtype is unknown.
absl::StatusOr<v1::Tensor> MakeTensor(std::span<const float> values,
                                      std::vector<int64_t> shape, v1::DType dtype);

// An inline tensor from raw little-endian element bits (e.g. fp16 or bf16 bit patterns),
// copied as is. INVALID_ARGUMENT if the byte count does not match shape and dtype.
absl::StatusOr<v1::Tensor> MakeTensorFromBytes(std::string bytes, std::vector<int64_t> shape,
                                               v1::DType dtype);

// An inline fp16 or bf16 tensor from 16-bit element bit patterns (host uint16_t arrays, e.g. a
// framework's half tensor). INVALID_ARGUMENT unless dtype is FLOAT16/BFLOAT16 and the count matches.
absl::StatusOr<v1::Tensor> MakeTensorFromBits16(std::span<const uint16_t> bits,
                                                std::vector<int64_t> shape, v1::DType dtype);
// The 16-bit element bit patterns of an inline fp16/bf16 tensor.
absl::StatusOr<std::vector<uint16_t>> TensorToBits16(const v1::Tensor& tensor);

// A tensor that refers to `shape` x `dtype` bytes at `offset_bytes` of registered buffer
// `buffer_id`.
v1::Tensor MakeBufferTensor(const std::string& buffer_id, uint64_t offset_bytes,
                            const std::vector<int64_t>& shape, v1::DType dtype);

// The elements of an inline tensor as float. INVALID_ARGUMENT if it is not inline, its dtype is
// unknown or its byte count does not match its shape.
absl::StatusOr<std::vector<float>> TensorToFloats(const v1::Tensor& tensor);

// Encodes floats as `dtype` into `out` (out.size() == values.size() * DTypeSize(dtype)), e.g.
// to fill a shared-memory buffer. INVALID_ARGUMENT on a size mismatch or unknown dtype.
absl::Status EncodeFloats(std::span<const float> values, v1::DType dtype, std::span<char> out);
// Decodes `count` = bytes.size() / DTypeSize(dtype) elements of `dtype` into floats.
absl::StatusOr<std::vector<float>> DecodeFloats(std::span<const char> bytes, v1::DType dtype);

}  // namespace attnd::client
