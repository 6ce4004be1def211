// 16-bit <-> fp32 conversions of the vectors the kernels load and store, written once for both
// element types on top of the 2-wide packing: Pack2/Unpack2 (one 32-bit register = two T),
// Vec8 (one 16-byte vector = 8 T), Vec4 (4 T = 8 bytes, or 4 floats = 16 bytes).
// T = __half or __nv_bfloat16 (Vec4 also float). Round to nearest even, as the intrinsics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "attnd/kernels/types.h"

namespace attnd::kernels::cuda::internal {

// The CUDA element type of a 16-bit DType (the kernels' template argument T).
template <DType kDType>
struct CudaTypeOf;
template <>
struct CudaTypeOf<DType::kFloat16> {
  using type = __half;
};
template <>
struct CudaTypeOf<DType::kBFloat16> {
  using type = __nv_bfloat16;
};

// The 2-wide vector type of T (__half2 or __nv_bfloat162) and its conversions.
template <typename T>
using Pair2 = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;
template <typename T>
__device__ __forceinline__ Pair2<T> FloatsToPair(float x, float y) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>);
  if constexpr (std::is_same_v<T, __half>) {
    return __floats2half2_rn(x, y);
  } else {
    return __floats2bfloat162_rn(x, y);
  }
}
template <typename T>
__device__ __forceinline__ float2 PairToFloats(Pair2<T> h) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half22float2(h);
  } else {
    return __bfloat1622float2(h);
  }
}

// Two floats -> one 32-bit register of two T (x = low half), and back.
template <typename T>
__device__ __forceinline__ uint32_t Pack2(float x, float y) {
  Pair2<T> h = FloatsToPair<T>(x, y);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <typename T>
__device__ __forceinline__ float2 Unpack2(uint32_t u) {
  return PairToFloats<T>(*reinterpret_cast<const Pair2<T>*>(&u));
}

// ---- 8 x T (one 16-byte vector) <-> 8 floats ------------------------------------------------
template <typename T>
struct Vec8 {
  static __device__ __forceinline__ void ToFloat(const uint4& u, float (&f)[8]) {
    const Pair2<T>* h = reinterpret_cast<const Pair2<T>*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 x = PairToFloats<T>(h[i]);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
  static __device__ __forceinline__ uint4 FromFloat(const float (&f)[8]) {
    uint4 u;
    Pair2<T>* h = reinterpret_cast<Pair2<T>*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = FloatsToPair<T>(f[2 * i], f[2 * i + 1]);
    return u;
  }
};

// ---- 4 x T <-> float4 -------------------------------------------------------------------------
template <typename T>
struct Vec4 {
  static __device__ __forceinline__ float4 Load(const T* p) {
    if constexpr (std::is_same_v<T, float>) {
      return *reinterpret_cast<const float4*>(p);
    } else {
      const uint2 u = *reinterpret_cast<const uint2*>(p);
      const float2 a = Unpack2<T>(u.x), b = Unpack2<T>(u.y);
      return make_float4(a.x, a.y, b.x, b.y);
    }
  }
  static __device__ __forceinline__ void Store(T* p, float4 v) {
    if constexpr (std::is_same_v<T, float>) {
      *reinterpret_cast<float4*>(p) = v;
    } else {
      *reinterpret_cast<uint2*>(p) = make_uint2(Pack2<T>(v.x, v.y), Pack2<T>(v.z, v.w));
    }
  }
};

}  // namespace attnd::kernels::cuda::internal
