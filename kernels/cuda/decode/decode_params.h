// Internal interface between the decode host code (decode.cc: plan and run, absl statuses) and
// the decode kernels (decode_kernel.cuh on CUDA cores, decode_tc_kernel.cuh on tensor cores,
// instantiated per (dtype, head_dim) in generated/decode_hd*_*.cu). Kernel side returns
// cudaError_t; the host turns it into a status.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attnd/kernels/types.h"
#include "blocks/paged_kv.h"
#include "blocks/variant.h"
#include "planning/work_items.h"

namespace attnd::kernels::cuda::internal {

// Parameters of the batch decode kernels (passed as a __grid_constant__ struct).
struct DecodeKernelParams {
  const void* q = nullptr;  // [batch, num_qo_heads, head_dim]
  void* o = nullptr;        // [batch, num_qo_heads, head_dim]
  float* lse = nullptr;     // [batch, num_qo_heads] natural log, or null

  PagedKvParams kv;  // one layer and the plan's page table

  int32_t num_qo_heads = 0;
  int32_t group = 1;       // query heads per KV head
  int32_t head_tiles = 1;  // CTAs per KV head along the head axis: ceil(group / tile)
  int32_t head_ctas = 1;   // CTAs per work item: num_kv_heads * head_tiles

  const DecodeWorkItem* items = nullptr;  // [gridDim.x / head_ctas]
  // Graph-safe works (PrepareDecodeForGraph): the number of valid items, in device memory (the
  // grid is sized for the work's capacity; CTAs of items past it exit at once). null: all.
  const int32_t* live_items = nullptr;
  float* partial_o = nullptr;    // [num_items, num_qo_heads, head_dim] by state_row
  float* partial_lse = nullptr;  // [num_items, num_qo_heads] natural log, by state_row

  VariantParams variant;  // soft cap, window, RoPE (ResolveVariant)
};

// Instantiated per (q dtype, K/V dtype, head_dim) in generated/decode_hd*_*.cu; declared with
// the DTypes so that host code needs no CUDA half types. kQ (q and o): fp16 or bf16; kKv: kQ,
// the other 16-bit type (CUDA cores only) or fp8 e4m3 / e5m2 (both kernels; scales in
// params.kv). head_tile: query heads per CTA (DecodeHeadTile, planning/decode_schedule.h). The
// grid is [num_items * params.head_ctas] (decode_item.cuh, LocateDecodeCta).
template <DType kQ, DType kKv, int kHeadDim>
cudaError_t LaunchDecodeKernel(const DecodeKernelParams& params, int num_items, int num_kv_heads,
                               int head_tile, cudaStream_t stream);
template <DType kQ, DType kKv, int kHeadDim>
cudaError_t DecodeKernelOccupancy(int head_tile, int* ctas_per_sm);

// The tensor-core decode kernel (decode_tc_kernel.cuh): kTcHeadTile = 16 query heads per CTA,
// head_dim 64 and 128, kKv = kQ or fp8; instantiated next to LaunchDecodeKernel.
template <DType kQ, DType kKv, int kHeadDim>
cudaError_t LaunchDecodeTcKernel(const DecodeKernelParams& params, int num_items, int num_kv_heads,
                                 cudaStream_t stream);
template <DType kQ, DType kKv, int kHeadDim>
cudaError_t DecodeTcKernelOccupancy(int* ctas_per_sm);

}  // namespace attnd::kernels::cuda::internal
