// Host launchers of append_kv and merge_states: the preconditions (launch_checks.h), then the
// kernels (append/append_kv.cu, merge/merge_states.cu).
#include <cstdint>

#include "append/append_params.h"
#include "attnd/kernels/cuda_launch.h"
#include "backend/cuda_status.h"
#include "backend/device_query.h"
#include "backend/launch_checks.h"
#include "merge/merge_params.h"

namespace attnd::kernels::cuda {
bool HeadDimCompiled(int32_t head_dim) { return checks::HeadDimBuilt(head_dim); }

absl::Status CheckAppendKv(const AppendKvParams& params) { return checks::AppendKv(params); }

absl::Status CheckMergeStates(const MergeStatesParams& params) {
  return checks::MergeStates(params);
}

absl::Status LaunchAppendKv(const AppendKvParams& params, cudaStream_t stream) {
  if (auto s = checks::AppendKv(params); !s.ok()) return s;
  const PagedKV& kv = params.kv;
  if (kv.batch_size == 0) return absl::OkStatus();
  auto sms = CurrentSmCount();
  if (!sms.ok()) return sms.status();
  internal::AppendKernelParams p;
  p.kv = kv;
  p.k = params.k;
  p.v = params.v;
  p.new_indptr = params.new_indptr;
  p.elem_size = static_cast<int32_t>(DTypeSize(kv.dtype));
  p.new_dtype = params.RowsDtype();
  ATTND_RETURN_IF_CUDA_ERROR(internal::LaunchAppendKernel(p, *sms, stream),
                             "append_kv kernel launch");
  return absl::OkStatus();
}

absl::Status LaunchMergeStates(const MergeStatesParams& params, cudaStream_t stream) {
  if (auto s = checks::MergeStates(params); !s.ok()) return s;
  if (params.num_rows == 0 || params.num_heads == 0) return absl::OkStatus();
  internal::MergeKernelParams p;
  p.v_in = params.v_in;
  p.s_in = params.s_in;
  p.v_out = params.v_out;
  p.s_out = params.s_out;
  p.num_rows = params.num_rows;
  p.num_states = params.num_states;
  p.num_heads = params.num_heads;
  p.head_dim = params.head_dim;
  p.v_in_b = params.v_in_b;
  p.s_in_b = params.s_in_b;
  ATTND_RETURN_IF_CUDA_ERROR(internal::LaunchMergeKernel(p, params.dtype, params.dtype, stream),
                             "merge_states kernel launch");
  return absl::OkStatus();
}

}  // namespace attnd::kernels::cuda
