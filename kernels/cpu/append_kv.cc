// AppendKv of the CPU reference: copies new K/V rows into their slots of the paged cache.
//   k, v: [new_nnz, num_kv_heads, head_dim] dense, in kv.dtype.
//   row new_indptr[b] + i  ->  kv position kv_len(b) - new_len(b) + i of request b.
#include <cstring>

#include "attnd/kernels/cpu_reference.h"
#include "validation.h"

namespace attnd::kernels::cpu {

absl::Status AppendKv(const AppendKvParams& params) {
  if (auto s = ValidateAppendKv(params); !s.ok()) return s;
  const PagedKV& kv = params.kv;
  const int32_t batch = kv.batch_size;
  auto new_begin = [&](int32_t b) -> int64_t { return params.new_indptr ? params.new_indptr[b] : b; };
  const size_t elem = DTypeSize(kv.dtype);
  const size_t row_bytes = static_cast<size_t>(kv.head_dim) * elem;
  char* const k_cache = static_cast<char*>(kv.data);
  char* const v_cache = k_cache + kv.kv_stride * elem;
  const char* const k_new = static_cast<const char*>(params.k);
  const char* const v_new = static_cast<const char*>(params.v);
  for (int32_t b = 0; b < batch; ++b) {
    const int64_t new_len = new_begin(b + 1) - new_begin(b);
    const int64_t first_position = PagedKvLen(kv, b) - new_len;
    for (int64_t i = 0; i < new_len; ++i) {
      const int64_t t = first_position + i;
      const int64_t page = kv.indices[kv.indptr[b] + t / kv.page_size];
      const int64_t slot = page * kv.page_stride + (t % kv.page_size) * kv.token_stride;
      const int64_t src_row = (new_begin(b) + i) * kv.num_kv_heads;
      for (int32_t h = 0; h < kv.num_kv_heads; ++h) {
        const int64_t dst = (slot + h * kv.head_stride) * static_cast<int64_t>(elem);
        const int64_t src = (src_row + h) * static_cast<int64_t>(row_bytes);
        std::memcpy(k_cache + dst, k_new + src, row_bytes);
        std::memcpy(v_cache + dst, v_new + src, row_bytes);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace attnd::kernels::cpu
