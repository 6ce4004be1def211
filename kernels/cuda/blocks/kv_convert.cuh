// K/V element types as the kernels read them, written once: the CUDA type of each K/V DType
// (16-bit, and fp8 e4m3 / e5m2 storage), how many elements one 16-byte copy carries, and the
// exact conversions of stored elements to fp32 (the CUDA-core decode kernel) and to the 16-bit
// compute type of the tensor-core kernels.
//
// FP8 -> 16-bit is exact for both formats and both targets (e4m3: 3 mantissa bits, |x| in
// [2^-9, 448]; e5m2: 2 mantissa bits, [2^-16, 57344]: every value is a binary16 and a bfloat16
// value). The scales (PagedKV.k_scale / v_scale) are not applied here: K's is folded into the
// logit scale and V's into the output, per KV head (both linear), by the kernels.
//
// How (one 32-bit register = 4 fp8 elements, element i in byte i -> two registers of 2 x T):
//   e5m2 -> fp16: an e5m2 byte is the top byte of the binary16 with the same value (prmt).
//   e4m3 -> fp16: cvt.rn.f16x2.e4m3x2 (sm_89+), exact.
//   -> bf16: the byte moved into the bf16 bit layout (sign to bit 15, exponent and mantissa
//   below it: value * 2^-(127 - bias)), then one bf16x2 multiply by 2^(127 - bias) (exact: a
//   power of two, no overflow; subnormal fp8 values are normal bf16 values after it).
//   A NaN byte (e4m3 S.1111.111) reads as 480 / -480 on the bf16 path; K/V never hold NaN on
//   purpose (appends saturate), and the CPU reference would give NaN there.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "blocks/vec.cuh"

namespace attnd::kernels::cuda::internal {

template <>
struct CudaTypeOf<DType::kFloat8E4M3> {
  using type = __nv_fp8_e4m3;
};
template <>
struct CudaTypeOf<DType::kFloat8E5M2> {
  using type = __nv_fp8_e5m2;
};

template <typename Tkv>
inline constexpr bool kIsFp8 =
    std::is_same_v<Tkv, __nv_fp8_e4m3> || std::is_same_v<Tkv, __nv_fp8_e5m2>;

// Elements of Tkv in one 16-byte copy (cp.async, vector loads): 8 (16-bit) or 16 (fp8).
template <typename Tkv>
inline constexpr int kKvVecElems = 16 / static_cast<int>(sizeof(Tkv));

// Four fp8 elements (bytes 0..3 of x) -> {elements 0, 1} and {2, 3} as pairs of T, exact.
template <typename T, typename Tkv>
__device__ __forceinline__ void Fp8x4ToPairs(uint32_t x, uint32_t* p01, uint32_t* p23) {
  static_assert(kIsFp8<Tkv>);
  constexpr bool kE4m3 = std::is_same_v<Tkv, __nv_fp8_e4m3>;
  if constexpr (std::is_same_v<T, __half>) {
    if constexpr (kE4m3) {
      const __half2_raw lo =
          __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(x & 0xffffu), __NV_E4M3);
      const __half2_raw hi =
          __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(x >> 16), __NV_E4M3);
      *p01 = static_cast<uint32_t>(lo.x) | (static_cast<uint32_t>(lo.y) << 16);
      *p23 = static_cast<uint32_t>(hi.x) | (static_cast<uint32_t>(hi.y) << 16);
    } else {
      // [0, b0, 0, b1] and [0, b2, 0, b3]: each byte in the high half of a 16-bit lane.
      *p01 = __byte_perm(x, 0u, 0x1404);
      *p23 = __byte_perm(x, 0u, 0x3424);
    }
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>);
    // Byte b in the high half of its lane: sign at bit 15, exponent and mantissa at 14..8; the
    // mantissa's top bit (lane bit 7 + m) goes to bf16's bit 6: a right shift by m + 1 (m = 3
    // for e4m3, 2 for e5m2), the sign kept in place by a mask.
    constexpr int kShift = kE4m3 ? 4 : 3;
    constexpr uint32_t kSign = 0x80008000u;
    constexpr uint32_t kBody = (0x7f007f00u >> kShift) & 0x7fff7fffu;
    // 2^(127 - 7) for e4m3, 2^(127 - 15) for e5m2, as a bf16 pair.
    constexpr uint32_t kFixBits = kE4m3 ? 0x7b807b80u : 0x77807780u;
    const uint32_t w01 = __byte_perm(x, 0u, 0x1404);
    const uint32_t w23 = __byte_perm(x, 0u, 0x3424);
    const uint32_t b01 = (w01 & kSign) | ((w01 >> kShift) & kBody);
    const uint32_t b23 = (w23 & kSign) | ((w23 >> kShift) & kBody);
    __nv_bfloat162 fix, v01, v23;
    *reinterpret_cast<uint32_t*>(&fix) = kFixBits;
    *reinterpret_cast<uint32_t*>(&v01) = b01;
    *reinterpret_cast<uint32_t*>(&v23) = b23;
    v01 = __hmul2(v01, fix);
    v23 = __hmul2(v23, fix);
    *p01 = *reinterpret_cast<uint32_t*>(&v01);
    *p23 = *reinterpret_cast<uint32_t*>(&v23);
  }
}

// 16 fp8 elements (one 16-byte vector) -> 16 elements of T (two 16-byte vectors), exact.
template <typename T, typename Tkv>
__device__ __forceinline__ void Fp8x16ToVecs(const uint4& in, uint4* lo, uint4* hi) {
  Fp8x4ToPairs<T, Tkv>(in.x, &lo->x, &lo->y);
  Fp8x4ToPairs<T, Tkv>(in.y, &lo->z, &lo->w);
  Fp8x4ToPairs<T, Tkv>(in.z, &hi->x, &hi->y);
  Fp8x4ToPairs<T, Tkv>(in.w, &hi->z, &hi->w);
}

// Eight K/V elements at p (16-byte aligned for 16-bit Tkv, 8-byte for fp8) -> fp32, exact.
template <typename Tkv>
__device__ __forceinline__ void LoadKvAsFloat8(const Tkv* p, float (&f)[8]) {
  if constexpr (kIsFp8<Tkv>) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    uint4 h;  // 8 x fp16: exact for both fp8 formats
    Fp8x4ToPairs<__half, Tkv>(raw.x, &h.x, &h.y);
    Fp8x4ToPairs<__half, Tkv>(raw.y, &h.z, &h.w);
    Vec8<__half>::ToFloat(h, f);
  } else {
    Vec8<Tkv>::ToFloat(*reinterpret_cast<const uint4*>(p), f);
  }
}

// The scale of KV head h from a [num_kv_heads] table, or 1 without one.
__device__ __forceinline__ float KvScale(const float* table, int h) {
  return table != nullptr ? __ldg(table + h) : 1.f;
}

}  // namespace attnd::kernels::cuda::internal
