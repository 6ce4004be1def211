// Tensor helpers of the client library: encoding to each dtype, decoding back, size checks.
#include "attnd/client/tensor.h"

#include <cmath>
#include <cstring>

#include "attnd/client/status.h"
#include "gtest/gtest.h"

namespace attnd::client {
namespace {

TEST(TensorTest, DTypeSizesAndNames) {
  EXPECT_EQ(DTypeSize(v1::DTYPE_FLOAT32), 4u);
  EXPECT_EQ(DTypeSize(v1::DTYPE_FLOAT16), 2u);
  EXPECT_EQ(DTypeSize(v1::DTYPE_BFLOAT16), 2u);
  EXPECT_EQ(DTypeSize(v1::DTYPE_FLOAT8_E4M3), 1u);
  EXPECT_EQ(DTypeSize(v1::DTYPE_UNSPECIFIED), 0u);
  EXPECT_STREQ(DTypeName(v1::DTYPE_BFLOAT16), "bfloat16");
  const int64_t shape[] = {2, 3, 4};
  EXPECT_EQ(NumElements(shape), 24);
  EXPECT_EQ(NumElements({}), 1);
}

TEST(TensorTest, Float16BitsAreLittleEndianIeee) {
  // 1.0 = 0x3c00, -2.0 = 0xc000, 65504 = 0x7bff (largest half).
  auto t = MakeTensor(std::vector<float>{1.f, -2.f, 65504.f}, {3}, v1::DTYPE_FLOAT16);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->inline_data().size(), 6u);
  const auto* b = reinterpret_cast<const unsigned char*>(t->inline_data().data());
  EXPECT_EQ(b[0] | (b[1] << 8), 0x3c00);
  EXPECT_EQ(b[2] | (b[3] << 8), 0xc000);
  EXPECT_EQ(b[4] | (b[5] << 8), 0x7bff);
  EXPECT_EQ(t->dtype(), v1::DTYPE_FLOAT16);
  ASSERT_EQ(t->shape_size(), 1);
  EXPECT_EQ(t->shape(0), 3);
}

TEST(TensorTest, Bfloat16IsTheTopHalfOfFloat32) {
  auto t = MakeTensor(std::vector<float>{1.f, -0.5f}, {2}, v1::DTYPE_BFLOAT16);
  ASSERT_TRUE(t.ok());
  const auto* b = reinterpret_cast<const unsigned char*>(t->inline_data().data());
  EXPECT_EQ(b[0] | (b[1] << 8), 0x3f80);
  EXPECT_EQ(b[2] | (b[3] << 8), 0xbf00);
}

class RoundTripTest : public ::testing::TestWithParam<v1::DType> {};

TEST_P(RoundTripTest, DecodeGivesTheRoundedValues) {
  const v1::DType dtype = GetParam();
  std::vector<float> values;
  for (int i = -50; i <= 50; ++i) values.push_back(0.0137f * i * i * (i % 3 - 1) + 0.001f * i);
  auto t = MakeTensor(values, {101}, dtype);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->inline_data().size(), values.size() * DTypeSize(dtype));
  auto back = TensorToFloats(*t);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), values.size());
  std::vector<float> rounded = values;
  RoundToDType(dtype, rounded);
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ((*back)[i], rounded[i]) << i;
    // Rounding moves a value by at most half a unit in the last place of the format.
    const double rel = dtype == v1::DTYPE_FLOAT32 ? 0 : dtype == v1::DTYPE_FLOAT16 ? 1.0 / 2048
                       : dtype == v1::DTYPE_BFLOAT16 ? 1.0 / 256 : 1.0 / 16;
    const double slack = dtype == v1::DTYPE_FLOAT8_E4M3 ? 1e-3 : 1e-6;  // fp8 subnormals: 2^-10
    EXPECT_LE(std::abs((*back)[i] - values[i]), rel * std::abs(values[i]) + slack) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, RoundTripTest,
                         ::testing::Values(v1::DTYPE_FLOAT32, v1::DTYPE_FLOAT16,
                                           v1::DTYPE_BFLOAT16, v1::DTYPE_FLOAT8_E4M3));

TEST(TensorTest, SizeMismatchesAreInvalidArgument) {
  auto wrong_count = MakeTensor(std::vector<float>(5, 1.f), {2, 3}, v1::DTYPE_FLOAT32);
  EXPECT_EQ(wrong_count.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong_count.status().message().find("[2,3]"), std::string::npos);
  auto unknown = MakeTensor(std::vector<float>(6, 1.f), {2, 3}, v1::DTYPE_UNSPECIFIED);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  auto raw = MakeTensorFromBytes(std::string(7, '\0'), {2, 2}, v1::DTYPE_FLOAT16);
  EXPECT_EQ(raw.status().code(), absl::StatusCode::kInvalidArgument);
  auto raw_ok = MakeTensorFromBytes(std::string(8, '\0'), {2, 2}, v1::DTYPE_FLOAT16);
  ASSERT_TRUE(raw_ok.ok());
  EXPECT_EQ(*TensorToFloats(*raw_ok), std::vector<float>(4, 0.f));

  v1::Tensor truncated = *MakeTensor(std::vector<float>(4, 1.f), {4}, v1::DTYPE_FLOAT32);
  truncated.mutable_inline_data()->resize(12);
  EXPECT_EQ(TensorToFloats(truncated).status().code(), absl::StatusCode::kInvalidArgument);

  std::vector<char> out(7);
  EXPECT_EQ(EncodeFloats(std::vector<float>(4, 1.f), v1::DTYPE_FLOAT16, out).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TensorTest, Bits16RoundTripAndMatchFloatEncoding) {
  const std::vector<uint16_t> bits = {0x3c00, 0xc000, 0x7bff, 0x0001};  // 1, -2, 65504, 2^-24
  auto t = MakeTensorFromBits16(bits, {2, 2}, v1::DTYPE_FLOAT16);
  ASSERT_TRUE(t.ok()) << t.status();
  auto floats = TensorToFloats(*t);
  ASSERT_TRUE(floats.ok());
  EXPECT_EQ(*floats, (std::vector<float>{1.f, -2.f, 65504.f, std::ldexp(1.f, -24)}));
  auto back = TensorToBits16(*t);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, bits);
  auto from_floats = MakeTensor(*floats, {2, 2}, v1::DTYPE_FLOAT16);
  ASSERT_TRUE(from_floats.ok());
  EXPECT_EQ(from_floats->inline_data(), t->inline_data());
  EXPECT_EQ(MakeTensorFromBits16(bits, {2, 2}, v1::DTYPE_FLOAT32).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeTensorFromBits16(bits, {3}, v1::DTYPE_BFLOAT16).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TensorToBits16(*MakeTensor(*floats, {4}, v1::DTYPE_FLOAT32)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TensorTest, BufferTensorsReferToASlice) {
  v1::Tensor t = MakeBufferTensor("buf-1", 256, {4, 8}, v1::DTYPE_BFLOAT16);
  EXPECT_EQ(t.data_case(), v1::Tensor::kBuffer);
  EXPECT_EQ(t.buffer().buffer_id(), "buf-1");
  EXPECT_EQ(t.buffer().offset_bytes(), 256u);
  EXPECT_EQ(t.shape_size(), 2);
  EXPECT_EQ(TensorToFloats(t).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TensorTest, EncodeDecodeUnalignedBytes) {
  std::vector<char> storage(1 + 3 * 4);
  std::span<char> unaligned(storage.data() + 1, 12);
  const std::vector<float> values = {1.5f, -3.25f, 1e-3f};
  ASSERT_TRUE(EncodeFloats(values, v1::DTYPE_FLOAT32, unaligned).ok());
  auto back = DecodeFloats(unaligned, v1::DTYPE_FLOAT32);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, values);
}

TEST(StatusTest, WireCodesKeepCodeAndMessage) {
  EXPECT_TRUE(FromWireCode(0, "ignored").ok());
  absl::Status s = FromWireCode(11, "layer=9 is outside 0..1");
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(s.message(), "layer=9 is outside 0..1");
  EXPECT_EQ(FromWireCode(7, "x").code(), absl::StatusCode::kPermissionDenied);
  absl::Status odd = FromWireCode(99, "weird");
  EXPECT_EQ(odd.code(), absl::StatusCode::kUnknown);
  EXPECT_NE(odd.message().find("99"), std::string::npos);
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "big")).code(),
            absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace attnd::client
