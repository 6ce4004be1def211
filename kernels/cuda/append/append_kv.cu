// append_kv: copies new tokens' K/V rows into their pages (NHD or any strides), 16 bytes per
// copy. Grid (batch, Y): block (b, y) copies rows y, y + Y, ... of request b, so that one long
// request (prefill) spreads over many CTAs while decode gets one CTA per request.
// Request b's i-th new row goes to kv position kv_len(b) - new_len(b) + i.
#include <cuda_runtime.h>

#include <cstdint>

#include "append/append_params.h"

namespace attnd::kernels::cuda::internal {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads) AppendKvKernel(const __grid_constant__ AppendKernelParams p) {
  const PagedKV& kv = p.kv;
  const int b = blockIdx.x;
  const int row_begin = p.new_indptr != nullptr ? p.new_indptr[b] : b;
  const int new_len = p.new_indptr != nullptr ? p.new_indptr[b + 1] - row_begin : 1;
  const int page_begin = kv.indptr[b];
  const int kv_len = (kv.indptr[b + 1] - page_begin - 1) * kv.page_size + kv.last_page_len[b];
  const int first_pos = kv_len - new_len;
  const int es = p.elem_size;
  const int vecs_per_head = kv.head_dim * es / 16;
  const int vecs_per_row = kv.num_kv_heads * vecs_per_head;
  const char* base_k = static_cast<const char*>(p.k);
  const char* base_v = static_cast<const char*>(p.v);
  char* data = static_cast<char*>(kv.data);

  for (int i = blockIdx.y; i < new_len; i += gridDim.y) {
    const int pos = first_pos + i;
    if (pos < 0) continue;  // more new rows than the page table holds: validated upstream
    const int page = kv.indices[page_begin + pos / kv.page_size];
    const int64_t dst_tok = (static_cast<int64_t>(page) * kv.page_stride +
                             static_cast<int64_t>(pos % kv.page_size) * kv.token_stride) * es;
    const int64_t src_row = static_cast<int64_t>(row_begin + i) * vecs_per_row;  // in vectors
    for (int c = threadIdx.x; c < vecs_per_row; c += kThreads) {
      const int h = c / vecs_per_head;
      const int v = c % vecs_per_head;
      const int64_t dst = dst_tok + h * kv.head_stride * es + v * 16;
      const uint4 kval = reinterpret_cast<const uint4*>(base_k)[src_row + c];
      const uint4 vval = reinterpret_cast<const uint4*>(base_v)[src_row + c];
      *reinterpret_cast<uint4*>(data + dst) = kval;
      *reinterpret_cast<uint4*>(data + dst + kv.kv_stride * es) = vval;
    }
  }
}

}  // namespace

cudaError_t LaunchAppendKernel(const AppendKernelParams& p, int num_sms, cudaStream_t stream) {
  const int batch = p.kv.batch_size;
  if (batch == 0) return cudaSuccess;
  // Enough CTAs to fill the GPU a few times over even for a single long request.
  int y = (4 * num_sms + batch - 1) / batch;
  if (y < 1) y = 1;
  if (y > 65535) y = 65535;
  if (p.new_indptr == nullptr) y = 1;
  AppendKvKernel<<<dim3(batch, y), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace attnd::kernels::cuda::internal
