// Device-side variant policies (VariantParams, blocks/variant.h), written once: the logit
// transform with the optional soft cap, and the first key a sliding window lets a query see.
// Masks are applied by the kernels' tile loops with these bounds.
#pragma once

#include <cuda_runtime.h>

#include "blocks/numerics.h"
#include "blocks/variant.h"

namespace attnd::kernels::cuda::internal {

// The soft cap part of the base-2 logit (numerics.h): tanh(raw * pre) with a cap, raw without.
__device__ __forceinline__ float CapLogit(float raw, const LogitScale& ls) {
  return ls.soft_cap ? tanhf(raw * ls.pre) : raw;
}
// The base-2 logit l2 = post * CapLogit(raw).
__device__ __forceinline__ float Log2Logit(float raw, const LogitScale& ls) {
  return ls.post * CapLogit(raw, ls);
}

// First kv position visible from query position q_pos when scanning from `begin`: the sliding
// window keeps [q_pos - window_left, q_pos].
__device__ __forceinline__ int FirstVisibleKv(const VariantParams& v, int q_pos, int begin) {
  return v.window_left >= 0 ? max(begin, q_pos - v.window_left) : begin;
}

}  // namespace attnd::kernels::cuda::internal
