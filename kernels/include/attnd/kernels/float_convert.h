// Scalar conversions between float32 and the 16/8-bit storage types of attnd (IEEE fp16, bfloat16,
// fp8 e4m3, fp8 e5m2), done on raw bit patterns so they need no compiler or CUDA support for
// those types.
//
// Rounding: float -> fp16 / bf16 round to nearest, ties to even (the IEEE default and what the
// CUDA intrinsics __float2half_rn / __float2bfloat16_rn do). Inf stays Inf; NaN stays NaN (quiet,
// sign kept). Finite values too large for fp16 become +-Inf, as IEEE rounding prescribes.
// float -> fp8 e4m3 (the "fn" variant: no Inf, NaN = S.1111.111, max 448) rounds to nearest even
// and saturates finite values to +-448 (CUDA's __NV_SATFINITE); Inf saturates too, NaN stays NaN.
// float -> fp8 e5m2 (IEEE-like: Inf and NaN exist, max finite 57344) rounds to nearest even and
// saturates the same way (finite values and Inf to +-57344).
//
// Every function is usable from host code; when compiled by nvcc they are also __device__.
// LoadAsFloat / StoreFromFloat read or write element `index` of an array of the given DType.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "attnd/kernels/types.h"

#if defined(__CUDACC__)
#define ATTND_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ATTND_HOST_DEVICE inline
#endif

namespace attnd::kernels {

ATTND_HOST_DEVICE uint32_t FloatBits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

ATTND_HOST_DEVICE float BitsToFloat(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

// ---- IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits ----------------------------

ATTND_HOST_DEVICE float HalfBitsToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return BitsToFloat(sign | 0x7f800000u | (mantissa << 13));  // Inf/NaN
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return BitsToFloat(sign | FloatBits(magnitude));
  }
  // Normal: rebias the exponent from 15 to 127 (add 112) and widen the mantissa.
  return BitsToFloat(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

ATTND_HOST_DEVICE uint16_t FloatToHalfBits(float f) {
  const uint32_t x = FloatBits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) {  // NaN: keep the top payload bits, force quiet
    return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  }
  // >= 65520 (half-way between 65504, the largest half, and 65536) rounds to Inf; so does Inf.
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (ax < 0x38800000u) {  // below 2^-14: a half subnormal (or zero)
    // Values <= 2^-25 round to zero (2^-25 is the tie between 0 and the smallest subnormal).
    if (ax <= 0x33000000u) return static_cast<uint16_t>(sign);
    // value = m * 2^(e - 150) with the implicit bit; in units of 2^-24 that is m >> (126 - e).
    const uint32_t e = ax >> 23;
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14 .. 24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;  // may carry into the smallest normal
    return static_cast<uint16_t>(sign | r);
  }
  // Normal: rebias (subtract 112 << 23) then drop 13 mantissa bits with round-to-nearest-even.
  // A carry out of the mantissa correctly bumps the exponent.
  uint32_t r = ax - 0x38000000u;
  const uint32_t rem = r & 0x1fffu;
  r >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return static_cast<uint16_t>(sign | r);
}

// ---- bfloat16: the top 16 bits of a float32 -----------------------------------------------------

ATTND_HOST_DEVICE float Bf16BitsToFloat(uint16_t b) {
  return BitsToFloat(static_cast<uint32_t>(b) << 16);
}

ATTND_HOST_DEVICE uint16_t FloatToBf16Bits(float f) {
  const uint32_t x = FloatBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep sign and top payload, force quiet
    return static_cast<uint16_t>((x >> 16) | 0x0040u);
  }
  // Round to nearest even on the low 16 bits; overflow carries into Inf as it should.
  const uint32_t rounding_bias = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding_bias) >> 16);
}

// ---- fp8 e4m3 (fn): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no Inf -----------------------

ATTND_HOST_DEVICE float Fp8E4m3BitsToFloat(uint8_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x80u) << 24;
  const uint32_t exponent = (v >> 3) & 0xfu;
  const uint32_t mantissa = v & 0x7u;
  if (exponent == 0xfu && mantissa == 0x7u) return BitsToFloat(sign | 0x7fc00000u);  // NaN
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-9
    const float magnitude = static_cast<float>(mantissa) * 0.001953125f;
    return BitsToFloat(sign | FloatBits(magnitude));
  }
  return BitsToFloat(sign | ((exponent + 120u) << 23) | (mantissa << 20));
}

// float -> an 8-bit float of kMantissa mantissa bits and exponent bias kBias (e4m3: 3, 7; e5m2:
// 2, 15), round to nearest even: |f| from `saturate_from` (the float bits half-way past the
// largest finite value) on, Inf included, becomes `max_code`; NaN becomes `nan_code`.
template <int kMantissa, int kBias>
ATTND_HOST_DEVICE uint8_t FloatToFp8Bits(float f, uint32_t saturate_from, uint32_t max_code,
                                         uint32_t nan_code) {
  const uint32_t x = FloatBits(f);
  const uint32_t sign = (x >> 24) & 0x80u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint8_t>(sign | nan_code);
  if (ax >= saturate_from) return static_cast<uint8_t>(sign | max_code);
  constexpr uint32_t kMinNormal = static_cast<uint32_t>(127 + 1 - kBias) << 23;
  if (ax < kMinNormal) {  // subnormal (units of 2^(1 - kBias - kMantissa)) or zero
    // At most half the smallest subnormal (a tie) rounds to 0.
    if (ax <= static_cast<uint32_t>(127 - kBias - kMantissa) << 23) {
      return static_cast<uint8_t>(sign);
    }
    const uint32_t e = ax >> 23;
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    // value = m * 2^(e - 150): in subnormal units, m >> (151 - kBias - kMantissa - e).
    const uint32_t shift = static_cast<uint32_t>(151 - kBias - kMantissa) - e;
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    return static_cast<uint8_t>(sign | r);
  }
  // Normal: rebias 127 -> kBias, keep kMantissa mantissa bits with RNE.
  uint32_t r = ax - (static_cast<uint32_t>(127 - kBias) << 23);
  constexpr uint32_t kDropped = 23 - kMantissa;
  const uint32_t rem = r & ((1u << kDropped) - 1u);
  r >>= kDropped;
  if (rem > (1u << (kDropped - 1u)) || (rem == (1u << (kDropped - 1u)) && (r & 1u))) ++r;
  return static_cast<uint8_t>(sign | r);
}

// >= 464 (half-way between 448 and the would-be 480) saturates to 448 (0x7e); so does Inf.
ATTND_HOST_DEVICE uint8_t FloatToFp8E4m3Bits(float f) {
  return FloatToFp8Bits<3, 7>(f, 0x43e80000u, 0x7eu, 0x7fu);
}

// ---- fp8 e5m2: 1 sign, 5 exponent (bias 15), 2 mantissa bits: the top byte of an IEEE binary16 --

ATTND_HOST_DEVICE float Fp8E5m2BitsToFloat(uint8_t v) {
  return HalfBitsToFloat(static_cast<uint16_t>(static_cast<uint16_t>(v) << 8));
}

// Round to nearest even, like CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E5M2):
// >= 61440 (half-way between 57344 and the would-be 65536) saturates to 57344 (0x7b), and so
// does Inf; NaN stays NaN.
ATTND_HOST_DEVICE uint8_t FloatToFp8E5m2Bits(float f) {
  return FloatToFp8Bits<2, 15>(f, 0x47700000u, 0x7bu, 0x7fu);
}

// ---- Typed element access -------------------------------------------------------------------

// Reads element `index` of an array of `dtype` at `base` as float.
ATTND_HOST_DEVICE float LoadAsFloat(const void* base, DType dtype, size_t index) {
  switch (dtype) {
    case DType::kFloat32: return static_cast<const float*>(base)[index];
    case DType::kFloat16: return HalfBitsToFloat(static_cast<const uint16_t*>(base)[index]);
    case DType::kBFloat16: return Bf16BitsToFloat(static_cast<const uint16_t*>(base)[index]);
    case DType::kFloat8E4M3: return Fp8E4m3BitsToFloat(static_cast<const uint8_t*>(base)[index]);
    case DType::kFloat8E5M2: return Fp8E5m2BitsToFloat(static_cast<const uint8_t*>(base)[index]);
  }
  return 0.f;
}

// Writes `value`, rounded to `dtype`, into element `index` of the array at `base`.
ATTND_HOST_DEVICE void StoreFromFloat(void* base, DType dtype, size_t index, float value) {
  switch (dtype) {
    case DType::kFloat32: static_cast<float*>(base)[index] = value; return;
    case DType::kFloat16: static_cast<uint16_t*>(base)[index] = FloatToHalfBits(value); return;
    case DType::kBFloat16: static_cast<uint16_t*>(base)[index] = FloatToBf16Bits(value); return;
    case DType::kFloat8E4M3: static_cast<uint8_t*>(base)[index] = FloatToFp8E4m3Bits(value); return;
    case DType::kFloat8E5M2: static_cast<uint8_t*>(base)[index] = FloatToFp8E5m2Bits(value); return;
  }
}

// Rounds a float to the nearest value representable in `dtype` (float stays as is).
ATTND_HOST_DEVICE float RoundTo(DType dtype, float value) {
  switch (dtype) {
    case DType::kFloat32: return value;
    case DType::kFloat16: return HalfBitsToFloat(FloatToHalfBits(value));
    case DType::kBFloat16: return Bf16BitsToFloat(FloatToBf16Bits(value));
    case DType::kFloat8E4M3: return Fp8E4m3BitsToFloat(FloatToFp8E4m3Bits(value));
    case DType::kFloat8E5M2: return Fp8E5m2BitsToFloat(FloatToFp8E5m2Bits(value));
  }
  return value;
}

}  // namespace attnd::kernels
