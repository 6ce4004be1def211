// Tests of attnd/kernels/float_convert.h against independent oracles: the compiler's _Float16
// (GCC on x86-64 converts with IEEE round-to-nearest-even) and exact rounding done in double.
#include "attnd/kernels/float_convert.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace attnd::kernels {
namespace {

// Rounds x to the nearest value of a binary format with `mantissa_bits` explicit bits, minimum
// normal exponent `min_exp` (subnormals below it), ties to even; computed in double, where all
// these operations are exact for float inputs.
double RoundToFormat(double x, int mantissa_bits, int min_exp) {
  if (x == 0 || !std::isfinite(x)) return x;
  int exp;
  std::frexp(std::fabs(x), &exp);  // |x| = f * 2^exp, f in [0.5, 1)
  int e = exp - 1;                 // |x| in [2^e, 2^(e+1))
  if (e < min_exp) e = min_exp;
  const double ulp = std::ldexp(1.0, e - mantissa_bits);
  return std::nearbyint(x / ulp) * ulp;  // default rounding mode: to nearest even
}

bool SameFloat(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return FloatBits(a) == FloatBits(b);
}

#if defined(__FLT16_MAX__)
TEST(FloatConvert, HalfToFloatMatchesCompilerForAllBitPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    _Float16 native;
    const uint16_t bits = static_cast<uint16_t>(h);
    memcpy(&native, &bits, 2);
    EXPECT_TRUE(SameFloat(HalfBitsToFloat(bits), static_cast<float>(native))) << "bits " << h;
  }
}

TEST(FloatConvert, FloatToHalfMatchesCompilerOnRandomAndEdgeFloats) {
  std::mt19937 rng(1);
  std::vector<uint32_t> patterns = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u,
                                    0x477ff000u, 0x477fefffu, 0x477fe000u, 0x33000000u,
                                    0x33000001u, 0x38800000u, 0x387fffffu, 0x387fe000u,
                                    0x387ff000u, 0x00000001u, 0x7f7fffffu};
  for (int i = 0; i < 2000000; ++i) patterns.push_back(rng());
  // Dense sweep around the half range, where the rounding decisions are made.
  for (uint32_t u = 0x33000000u; u < 0x47800000u; u += 0x1001u) patterns.push_back(u);
  for (uint32_t u : patterns) {
    const float f = BitsToFloat(u);
    if (std::isnan(f)) continue;  // NaN payload conventions differ; tested separately
    const _Float16 native = static_cast<_Float16>(f);
    uint16_t expected;
    memcpy(&expected, &native, 2);
    ASSERT_EQ(FloatToHalfBits(f), expected) << std::hex << "float bits 0x" << u;
  }
}
#endif

TEST(FloatConvert, HalfRoundTripsEveryNonNanValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    const float f = HalfBitsToFloat(bits);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(HalfBitsToFloat(FloatToHalfBits(f))));
      continue;
    }
    EXPECT_EQ(FloatToHalfBits(f), bits) << "bits " << h;
  }
}

TEST(FloatConvert, FloatToHalfMatchesDoubleRounding) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<double> log_mag(-27, 16);
  for (int i = 0; i < 200000; ++i) {
    const float f = static_cast<float>((rng() & 1 ? -1 : 1) * std::exp2(log_mag(rng)));
    double expected = RoundToFormat(f, 10, -14);
    if (std::fabs(expected) > 65504) expected = std::copysign(INFINITY, f);
    ASSERT_EQ(static_cast<double>(HalfBitsToFloat(FloatToHalfBits(f))), expected) << f;
  }
}

TEST(FloatConvert, Bf16MatchesDoubleRoundingAndRoundTrips) {
  std::mt19937 rng(3);
  for (int i = 0; i < 1000000; ++i) {
    const float f = BitsToFloat(rng());
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(Bf16BitsToFloat(FloatToBf16Bits(f))));
      continue;
    }
    double expected = RoundToFormat(f, 7, -126);
    if (std::fabs(expected) > std::numeric_limits<float>::max()) {
      expected = std::copysign(INFINITY, f);
    }
    ASSERT_EQ(static_cast<double>(Bf16BitsToFloat(FloatToBf16Bits(f))), expected)
        << std::hex << FloatBits(f);
  }
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = Bf16BitsToFloat(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    EXPECT_EQ(FloatToBf16Bits(f), b);
  }
  EXPECT_TRUE(std::isinf(Bf16BitsToFloat(FloatToBf16Bits(INFINITY))));
  EXPECT_TRUE(std::isnan(Bf16BitsToFloat(FloatToBf16Bits(NAN))));
}

TEST(FloatConvert, Fp8E4m3DecodesRoundTripsAndSaturates) {
  for (uint32_t v = 0; v < 256; ++v) {
    const float f = Fp8E4m3BitsToFloat(static_cast<uint8_t>(v));
    if ((v & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(f));
      continue;
    }
    // Decode independently: sign, exponent (bias 7), mantissa; subnormals at exponent 0.
    const int e = (v >> 3) & 0xf, m = v & 7;
    const double mag = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);
    EXPECT_EQ(static_cast<double>(f), (v & 0x80) ? -mag : mag) << v;
    EXPECT_EQ(FloatToFp8E4m3Bits(f), v) << v;
  }
  EXPECT_EQ(Fp8E4m3BitsToFloat(FloatToFp8E4m3Bits(1e6f)), 448.f);
  EXPECT_EQ(Fp8E4m3BitsToFloat(FloatToFp8E4m3Bits(-INFINITY)), -448.f);
  std::mt19937 rng(4);
  std::uniform_real_distribution<double> log_mag(-12, 8.8);
  for (int i = 0; i < 100000; ++i) {
    const float f = static_cast<float>((rng() & 1 ? -1 : 1) * std::exp2(log_mag(rng)));
    double expected = RoundToFormat(f, 3, -6);
    if (std::fabs(expected) > 448) expected = std::copysign(448.0, f);
    ASSERT_EQ(static_cast<double>(Fp8E4m3BitsToFloat(FloatToFp8E4m3Bits(f))), expected) << f;
  }
}

TEST(FloatConvert, Fp8E5m2DecodesRoundTripsAndSaturates) {
  for (uint32_t v = 0; v < 256; ++v) {
    const float f = Fp8E5m2BitsToFloat(static_cast<uint8_t>(v));
    const int e = (v >> 2) & 0x1f, m = v & 3;
    if (e == 0x1f) {  // Inf (mantissa 0) or NaN
      EXPECT_TRUE(m == 0 ? std::isinf(f) : std::isnan(f)) << v;
      continue;
    }
    // Decode independently: sign, exponent (bias 15), mantissa; subnormals at exponent 0.
    const double mag = e == 0 ? std::ldexp(m, -16) : std::ldexp(4 + m, e - 17);
    EXPECT_EQ(static_cast<double>(f), (v & 0x80) ? -mag : mag) << v;
    EXPECT_EQ(FloatToFp8E5m2Bits(f), v) << v;
  }
  EXPECT_EQ(Fp8E5m2BitsToFloat(FloatToFp8E5m2Bits(1e6f)), 57344.f);
  EXPECT_EQ(Fp8E5m2BitsToFloat(FloatToFp8E5m2Bits(-INFINITY)), -57344.f);
  EXPECT_EQ(Fp8E5m2BitsToFloat(FloatToFp8E5m2Bits(61439.f)), 57344.f);  // below half-way: down
  EXPECT_TRUE(std::isnan(Fp8E5m2BitsToFloat(FloatToFp8E5m2Bits(NAN))));
  EXPECT_EQ(RoundTo(DType::kFloat8E5M2, 1.125f), 1.0f);  // tie, even -> down
  EXPECT_EQ(RoundTo(DType::kFloat8E5M2, 1.375f), 1.5f);  // tie, odd -> up
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> log_mag(-20, 16.2);
  for (int i = 0; i < 100000; ++i) {
    const float f = static_cast<float>((rng() & 1 ? -1 : 1) * std::exp2(log_mag(rng)));
    double expected = RoundToFormat(f, 2, -14);
    if (std::fabs(expected) > 57344) expected = std::copysign(57344.0, f);
    ASSERT_EQ(static_cast<double>(Fp8E5m2BitsToFloat(FloatToFp8E5m2Bits(f))), expected) << f;
  }
}

TEST(FloatConvert, LoadAndStoreUseTheDtypeLayout) {
  const float values[] = {1.5f, -2.25f, 3.0e-3f, 1000.f};
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat8E4M3,
                  DType::kFloat8E5M2}) {
    std::vector<uint8_t> buffer(4 * DTypeSize(t) + 1, 0xab);
    for (size_t i = 0; i < 4; ++i) StoreFromFloat(buffer.data(), t, i, values[i]);
    EXPECT_EQ(buffer.back(), 0xab) << DTypeName(t) << " wrote past its elements";
    for (size_t i = 0; i < 4; ++i) {
      EXPECT_EQ(LoadAsFloat(buffer.data(), t, i), RoundTo(t, values[i])) << DTypeName(t);
    }
  }
  EXPECT_EQ(RoundTo(DType::kFloat16, 1.0f + 1.0f / 2048), 1.0f);              // tie, even -> down
  EXPECT_EQ(RoundTo(DType::kBFloat16, 1.0f + 3.0f / 256), 1.0f + 1.0f / 64);  // tie, odd -> up
}

}  // namespace
}  // namespace attnd::kernels
