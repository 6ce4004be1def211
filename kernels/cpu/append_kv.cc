// AppendKv of the CPU reference: writes new K/V rows into their slots of the paged cache.
//   k, v: [new_nnz, num_kv_heads, head_dim] dense, in params.RowsDtype(): copied when it is the
//   cache's type, quantized with the cache's scales onto an fp8 cache (AppendKvParams).
//   row new_indptr[b] + i  ->  kv position kv_len(b) - new_len(b) + i of request b.
#include <cstring>

#include "attnd/kernels/cpu_reference.h"
#include "attnd/kernels/float_convert.h"
#include "validation.h"

namespace attnd::kernels::cpu {
namespace {

// One head's row of head_dim elements: copied, or quantized as x / scale into the fp8 cache.
void WriteRow(char* dst, DType cache, const char* src, DType rows, int32_t head_dim,
              const float* scale_table, int32_t head) {
  if (rows == cache) {
    std::memcpy(dst, src, static_cast<size_t>(head_dim) * DTypeSize(cache));
    return;
  }
  const float scale = scale_table != nullptr ? scale_table[head] : 1.f;
  for (int32_t d = 0; d < head_dim; ++d) {
    StoreFromFloat(dst, cache, d, LoadAsFloat(src, rows, d) / scale);
  }
}

}  // namespace

absl::Status AppendKv(const AppendKvParams& params) {
  if (auto s = ValidateAppendKv(params); !s.ok()) return s;
  const PagedKV& kv = params.kv;
  const int32_t batch = kv.batch_size;
  auto new_begin = [&](int32_t b) -> int64_t {
    return params.new_indptr ? params.new_indptr[b] : b;
  };
  const size_t elem = DTypeSize(kv.dtype);
  const size_t src_row_bytes = static_cast<size_t>(kv.head_dim) * DTypeSize(params.RowsDtype());
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
        const int64_t src = (src_row + h) * static_cast<int64_t>(src_row_bytes);
        WriteRow(k_cache + dst, kv.dtype, k_new + src, params.RowsDtype(), kv.head_dim, kv.k_scale,
                 h);
        WriteRow(v_cache + dst, kv.dtype, v_new + src, params.RowsDtype(), kv.head_dim, kv.v_scale,
                 h);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace attnd::kernels::cpu
