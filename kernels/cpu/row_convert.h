// Whole-row conversions between storage dtypes and float, with the dtype switch hoisted out of
// the element loop (the per-element LoadAsFloat/StoreFromFloat would branch on every element).
#pragma once

#include <cstdint>

#include "attnd/kernels/float_convert.h"
#include "attnd/kernels/types.h"

namespace attnd::kernels::cpu {

// float value of every fp16 bit pattern (256 KiB, built once on first use): a table lookup is
// several times cheaper than decoding the bits, and fp16 decoding was ~15% of attention time.
inline const float* HalfToFloatTable() {
  static const float* const table = [] {
    float* t = new float[65536];
    for (uint32_t h = 0; h < 65536; ++h) t[h] = HalfBitsToFloat(static_cast<uint16_t>(h));
    return t;
  }();
  return table;
}

// out[i] = element (offset + i) of the `dtype` array at base, as float, for i < n.
inline void LoadRow(const void* base, DType dtype, int64_t offset, int n, float* out) {
  switch (dtype) {
    case DType::kFloat32: {
      const float* src = static_cast<const float*>(base) + offset;
      for (int i = 0; i < n; ++i) out[i] = src[i];
      return;
    }
    case DType::kFloat16: {
      const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
      const float* table = HalfToFloatTable();
      for (int i = 0; i < n; ++i) out[i] = table[src[i]];
      return;
    }
    case DType::kBFloat16: {
      const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
      for (int i = 0; i < n; ++i) out[i] = Bf16BitsToFloat(src[i]);
      return;
    }
    case DType::kFloat8E4M3: {
      const uint8_t* src = static_cast<const uint8_t*>(base) + offset;
      for (int i = 0; i < n; ++i) out[i] = Fp8E4m3BitsToFloat(src[i]);
      return;
    }
    case DType::kFloat8E5M2: {
      const uint8_t* src = static_cast<const uint8_t*>(base) + offset;
      for (int i = 0; i < n; ++i) out[i] = Fp8E5m2BitsToFloat(src[i]);
      return;
    }
  }
}

// Element (offset + i) of the `dtype` array at base = in[i] rounded to dtype, for i < n.
inline void StoreRow(void* base, DType dtype, int64_t offset, int n, const float* in) {
  switch (dtype) {
    case DType::kFloat32: {
      float* dst = static_cast<float*>(base) + offset;
      for (int i = 0; i < n; ++i) dst[i] = in[i];
      return;
    }
    case DType::kFloat16: {
      uint16_t* dst = static_cast<uint16_t*>(base) + offset;
      for (int i = 0; i < n; ++i) dst[i] = FloatToHalfBits(in[i]);
      return;
    }
    case DType::kBFloat16: {
      uint16_t* dst = static_cast<uint16_t*>(base) + offset;
      for (int i = 0; i < n; ++i) dst[i] = FloatToBf16Bits(in[i]);
      return;
    }
    case DType::kFloat8E4M3: {
      uint8_t* dst = static_cast<uint8_t*>(base) + offset;
      for (int i = 0; i < n; ++i) dst[i] = FloatToFp8E4m3Bits(in[i]);
      return;
    }
    case DType::kFloat8E5M2: {
      uint8_t* dst = static_cast<uint8_t*>(base) + offset;
      for (int i = 0; i < n; ++i) dst[i] = FloatToFp8E5m2Bits(in[i]);
      return;
    }
  }
}

}  // namespace attnd::kernels::cpu
