// The paged KV cache as the kernels see it: a non-owning POD view (host and device code; the
// device operations on it are in paged_kv.cuh).
//
// Layout of one layer (NHD; strides in elements, PagedKV in attnd/kernels/types.h):
//   data[page][2 (K, V)][page_size][num_kv_heads][head_dim]
//   row (request b, kv position t, KV head h) of K at
//     data + indices[indptr[b] + t / page_size] * page_stride + (t % page_size) * token_stride
//          + h * head_stride,
//   its V row kv_stride further. Request b has indptr[b + 1] - indptr[b] pages, the last one
//   holding last_page_len[b] tokens.
#pragma once

#include <cstdint>

#include "attnd/kernels/types.h"
#include "planning/page_divisor.h"

namespace attnd::kernels::cuda::internal {

// A non-owning device view of one layer of the paged cache plus its CSR page table.
struct PagedKvParams {
  const void* data = nullptr;
  int64_t page_stride = 0;
  int64_t kv_stride = 0;
  int64_t token_stride = 0;
  int64_t head_stride = 0;
  int32_t page_size = 0;
  // token -> page by multiply-shift (no division, no branch): page = (umulhi(t, m) + t) >> s,
  // valid for 0 <= t < 2^31 and any page_size >= 1 (MakePageDivisor, planning/page_table.h).
  uint32_t page_div_m = 1;
  int32_t page_div_s = 0;
  const int32_t* indptr = nullptr;         // [batch + 1]
  const int32_t* indices = nullptr;        // [indptr[batch]]
  const int32_t* last_page_len = nullptr;  // [batch]
  // FP8 storage: the layer's dequantization scales, [num_kv_heads] float32, or null = 1
  // (PagedKV.k_scale / v_scale); the kernels fold K's into the logit scale and V's into o.
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;
};

// The kernels' view of a layer with its page table (host): the PagedKV fields plus the page
// divisor of its page size.
inline PagedKvParams MakePagedKvParams(const PagedKV& kv) {
  const PageDivisor div = MakePageDivisor(kv.page_size);
  return {.data = kv.data,
          .page_stride = kv.page_stride,
          .kv_stride = kv.kv_stride,
          .token_stride = kv.token_stride,
          .head_stride = kv.head_stride,
          .page_size = kv.page_size,
          .page_div_m = div.m,
          .page_div_s = div.s,
          .indptr = kv.indptr,
          .indices = kv.indices,
          .last_page_len = kv.last_page_len,
          .k_scale = kv.k_scale,
          .v_scale = kv.v_scale};
}

}  // namespace attnd::kernels::cuda::internal
