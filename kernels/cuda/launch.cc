// Host launchers of append_kv and merge_states: validation, then the kernels (append_kv.cu,
// merge_states.cu).
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "attnd/kernels/cuda_launch.h"
#include "cuda_status.h"
#include "launch_internal.h"

namespace attnd::kernels::cuda {
namespace {

bool Aligned(const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) % a) == 0; }

absl::StatusOr<int> CurrentSmCount() {
  int dev = 0, sms = 0;
  ATTND_RETURN_IF_CUDA_ERROR(cudaGetDevice(&dev), "cudaGetDevice");
  ATTND_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
                             "cudaDeviceGetAttribute");
  return sms;
}

}  // namespace

absl::Status LaunchAppendKv(const AppendKvParams& params, cudaStream_t stream) {
  const PagedKV& kv = params.kv;
  if (kv.batch_size == 0) return absl::OkStatus();
  const int64_t es = static_cast<int64_t>(DTypeSize(kv.dtype));
  if (es == 0) return absl::InvalidArgumentError("append_kv: unknown kv dtype");
  if (params.k == nullptr || params.v == nullptr || kv.data == nullptr || kv.indptr == nullptr ||
      kv.indices == nullptr || kv.last_page_len == nullptr) {
    return absl::InvalidArgumentError("append_kv: null k, v, kv data or page table");
  }
  if ((kv.head_dim * es) % 16 != 0 || !Aligned(params.k, 16) || !Aligned(params.v, 16) ||
      !Aligned(kv.data, 16) || (kv.page_stride * es) % 16 || (kv.kv_stride * es) % 16 ||
      (kv.token_stride * es) % 16 || (kv.head_stride * es) % 16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "append_kv: rows of head_dim ", kv.head_dim, " x ", es,
        " bytes, the k/v/kv pointers and strides must be multiples of 16 bytes"));
  }
  auto sms = CurrentSmCount();
  if (!sms.ok()) return sms.status();
  internal::AppendKernelParams p;
  p.kv = kv;
  p.k = params.k;
  p.v = params.v;
  p.new_indptr = params.new_indptr;
  p.elem_size = static_cast<int32_t>(es);
  ATTND_RETURN_IF_CUDA_ERROR(internal::LaunchAppendKernel(p, *sms, stream),
                             "append_kv kernel launch");
  return absl::OkStatus();
}

absl::Status LaunchMergeStates(const MergeStatesParams& params, cudaStream_t stream) {
  if (params.num_rows == 0 || params.num_heads == 0) return absl::OkStatus();
  if (params.num_states <= 0 || params.head_dim <= 0 || params.head_dim % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("merge_states: num_states ", params.num_states,
                                                   ", head_dim ", params.head_dim,
                                                   " (head_dim must be a multiple of 4)"));
  }
  if (params.dtype != DType::kFloat32 && params.dtype != DType::kFloat16 &&
      params.dtype != DType::kBFloat16) {
    return absl::UnimplementedError("merge_states: dtype must be fp32, fp16 or bf16");
  }
  if (params.v_in == nullptr || params.s_in == nullptr || params.v_out == nullptr) {
    return absl::InvalidArgumentError("merge_states: null v_in, s_in or v_out");
  }
  const uintptr_t a = params.dtype == DType::kFloat32 ? 16 : 8;
  if (!Aligned(params.v_in, a) || !Aligned(params.v_out, a)) {
    return absl::InvalidArgumentError("merge_states: v_in/v_out must be aligned to 4 elements");
  }
  internal::MergeKernelParams p;
  p.v_in = params.v_in;
  p.s_in = params.s_in;
  p.v_out = params.v_out;
  p.s_out = params.s_out;
  p.num_rows = params.num_rows;
  p.num_states = params.num_states;
  p.num_heads = params.num_heads;
  p.head_dim = params.head_dim;
  ATTND_RETURN_IF_CUDA_ERROR(internal::LaunchMergeKernel(p, params.dtype, params.dtype, stream),
                             "merge_states kernel launch");
  return absl::OkStatus();
}

}  // namespace attnd::kernels::cuda
