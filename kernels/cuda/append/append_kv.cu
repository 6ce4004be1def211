// append_kv: copies new tokens' K/V rows into their pages (NHD or any strides), 16 bytes per
// copy, or quantizes fp32 / fp16 / bf16 rows onto an fp8 cache with its scales. Grid (batch,
// Y): block (b, y) copies rows y, y + Y, ... of request b, so that one long request (prefill)
// spreads over many CTAs while decode gets one CTA per request.
// Request b's i-th new row goes to kv position kv_len(b) - new_len(b) + i.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "append/append_params.h"

namespace attnd::kernels::cuda::internal {
namespace {

constexpr int kThreads = 128;

// The work split of both kernels: block (b, y) writes rows y, y + gridDim.y, ... of request b's
// new rows; `row` gets (kv position, destination byte offset of the token, source row index).
struct AppendRow {
  bool valid;
  int64_t dst_tok;  // bytes: page * page_stride + slot * token_stride, in the cache's elements
  int64_t src_row;  // the row's index in k / v ([rows][num_kv_heads][head_dim])
};
__device__ __forceinline__ AppendRow RowOf(const AppendKernelParams& p, int b, int i) {
  const PagedKV& kv = p.kv;
  const int row_begin = p.new_indptr != nullptr ? p.new_indptr[b] : b;
  const int new_len = p.new_indptr != nullptr ? p.new_indptr[b + 1] - row_begin : 1;
  const int page_begin = kv.indptr[b];
  const int kv_len = (kv.indptr[b + 1] - page_begin - 1) * kv.page_size + kv.last_page_len[b];
  const int pos = kv_len - new_len + i;
  if (pos < 0) return {false, 0, 0};  // more new rows than the pages hold: validated upstream
  const int page = kv.indices[page_begin + pos / kv.page_size];
  const int64_t dst_tok = (static_cast<int64_t>(page) * kv.page_stride +
                           static_cast<int64_t>(pos % kv.page_size) * kv.token_stride) *
                          p.elem_size;
  return {true, dst_tok, static_cast<int64_t>(row_begin + i)};
}
__device__ __forceinline__ int NewLen(const AppendKernelParams& p, int b) {
  return p.new_indptr != nullptr ? p.new_indptr[b + 1] - p.new_indptr[b] : 1;
}

__global__ void __launch_bounds__(kThreads)
    AppendKvKernel(const __grid_constant__ AppendKernelParams p) {
  const PagedKV& kv = p.kv;
  const int b = blockIdx.x;
  const int es = p.elem_size;
  const int vecs_per_head = kv.head_dim * es / 16;
  const int vecs_per_row = kv.num_kv_heads * vecs_per_head;
  const char* base_k = static_cast<const char*>(p.k);
  const char* base_v = static_cast<const char*>(p.v);
  char* data = static_cast<char*>(kv.data);

  for (int i = blockIdx.y; i < NewLen(p, b); i += gridDim.y) {
    const AppendRow r = RowOf(p, b, i);
    if (!r.valid) continue;
    const int64_t src_row = r.src_row * vecs_per_row;  // in vectors
    for (int c = threadIdx.x; c < vecs_per_row; c += kThreads) {
      const int h = c / vecs_per_head;
      const int v = c % vecs_per_head;
      const int64_t dst = r.dst_tok + h * kv.head_stride * es + v * 16;
      const uint4 kval = reinterpret_cast<const uint4*>(base_k)[src_row + c];
      const uint4 vval = reinterpret_cast<const uint4*>(base_v)[src_row + c];
      *reinterpret_cast<uint4*>(data + dst) = kval;
      *reinterpret_cast<uint4*>(data + dst + kv.kv_stride * es) = vval;
    }
  }
}

template <typename Src>
__device__ __forceinline__ float ToFloat(Src x) {
  if constexpr (std::is_same_v<Src, float>) {
    return x;
  } else if constexpr (std::is_same_v<Src, __half>) {
    return __half2float(x);
  } else {
    return __bfloat162float(x);
  }
}

// 16 source elements at src -> 16 fp8 bytes of fp8(x / scale) (IEEE division, round to nearest
// even, saturating: the CPU reference's FloatToFp8*Bits).
template <typename Src, bool kE5m2>
__device__ __forceinline__ uint4 Quantize16(const Src* src, float scale) {
  uint32_t w[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    uint32_t word = 0;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float x = ToFloat(src[4 * j + e]) / scale;
      const uint32_t byte = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, kE5m2 ? __NV_E5M2 : __NV_E4M3);
      word |= byte << (8 * e);
    }
    w[j] = word;
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Rows of Src quantized onto the fp8 cache: thread c of a row writes 16 elements (one 16-byte
// vector of the cache) of K and of V.
template <typename Src, bool kE5m2>
__global__ void __launch_bounds__(kThreads)
    QuantizeAppendKvKernel(const __grid_constant__ AppendKernelParams p) {
  const PagedKV& kv = p.kv;
  const int b = blockIdx.x;
  const int vecs_per_head = kv.head_dim / 16;
  const int vecs_per_row = kv.num_kv_heads * vecs_per_head;
  const Src* base_k = static_cast<const Src*>(p.k);
  const Src* base_v = static_cast<const Src*>(p.v);
  char* data = static_cast<char*>(kv.data);
  for (int i = blockIdx.y; i < NewLen(p, b); i += gridDim.y) {
    const AppendRow r = RowOf(p, b, i);
    if (!r.valid) continue;
    const int64_t src_row = r.src_row * kv.num_kv_heads * kv.head_dim;  // in elements
    for (int c = threadIdx.x; c < vecs_per_row; c += kThreads) {
      const int h = c / vecs_per_head;
      const int v = c % vecs_per_head;
      const int64_t dst = r.dst_tok + h * kv.head_stride + v * 16;  // fp8: elements = bytes
      const int64_t src = src_row + static_cast<int64_t>(c) * 16;
      const float ks = kv.k_scale != nullptr ? kv.k_scale[h] : 1.f;
      const float vs = kv.v_scale != nullptr ? kv.v_scale[h] : 1.f;
      *reinterpret_cast<uint4*>(data + dst) = Quantize16<Src, kE5m2>(base_k + src, ks);
      *reinterpret_cast<uint4*>(data + dst + kv.kv_stride) =
          Quantize16<Src, kE5m2>(base_v + src, vs);
    }
  }
}

template <typename Src>
void LaunchQuantize(const AppendKernelParams& p, dim3 grid, cudaStream_t stream) {
  if (p.kv.dtype == DType::kFloat8E5M2) {
    QuantizeAppendKvKernel<Src, true><<<grid, kThreads, 0, stream>>>(p);
  } else {
    QuantizeAppendKvKernel<Src, false><<<grid, kThreads, 0, stream>>>(p);
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
  const dim3 grid(batch, y);
  if (p.new_dtype == p.kv.dtype) {
    AppendKvKernel<<<grid, kThreads, 0, stream>>>(p);
  } else {
    switch (p.new_dtype) {  // onto an fp8 cache (checks::AppendKv)
      case DType::kFloat32: LaunchQuantize<float>(p, grid, stream); break;
      case DType::kFloat16: LaunchQuantize<__half>(p, grid, stream); break;
      case DType::kBFloat16: LaunchQuantize<__nv_bfloat16>(p, grid, stream); break;
      default: return cudaErrorInvalidValue;
    }
  }
  return cudaGetLastError();
}

}  // namespace attnd::kernels::cuda::internal
