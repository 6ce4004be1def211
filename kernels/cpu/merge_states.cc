// MergeStates of the CPU reference, built on AttentionState::MergeNormalized.
//   v_in [num_rows, num_states, num_heads, head_dim], s_in [num_rows, num_states, num_heads]
//   (or the pair form: v_in, v_in_b [num_rows, num_heads, head_dim], s_in, s_in_b)
//   -> v_out [num_rows, num_heads, head_dim], s_out [num_rows, num_heads] (optional)
// One task per (row, head) reads all of its states before it writes, so in-place merges (an
// output that is exactly the memory of its input) are safe.
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention_state.h"
#include "attnd/kernels/cpu_reference.h"
#include "parallel_for.h"
#include "row_convert.h"

namespace attnd::kernels::cpu {

absl::Status MergeStates(const MergeStatesParams& p, int num_threads) {
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype ", DTypeName(p.dtype), " is not supported for merge_states"));
  }
  if (p.num_rows < 0 || p.num_states < 0 || p.num_heads <= 0 || p.head_dim <= 0 ||
      p.head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "merge_states shape must have num_rows >= 0, num_states >= 0, num_heads > 0, head_dim in "
        "1..",
        kMaxHeadDim, "; got ", p.num_rows, ", ", p.num_states, ", ", p.num_heads, ", ",
        p.head_dim));
  }
  const bool pair = p.pair();
  if (pair && (p.num_states != 2 || p.v_in_b == nullptr || p.s_in_b == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("merge_states pair form needs v_in_b and s_in_b and num_states 2; got ",
                     p.num_states, " states"));
  }
  if (p.num_rows == 0) return absl::OkStatus();
  if (p.v_out == nullptr) return absl::InvalidArgumentError("v_out is null");
  if (p.num_states > 0 && (p.v_in == nullptr || p.s_in == nullptr)) {
    return absl::InvalidArgumentError("v_in or s_in is null");
  }
  const int64_t dim = p.head_dim, heads = p.num_heads, states = p.num_states;
  return ParallelFor(static_cast<int64_t>(p.num_rows) * heads, num_threads, [&]() {
    return [&, state = AttentionState(p.head_dim),
            v = std::vector<float>(p.head_dim)](int64_t task) mutable {
      const int64_t row = task / heads, h = task % heads;
      state.Reset();
      for (int64_t i = 0; i < states; ++i) {
        // State i: row `task` of the i-th tensor (pair form), or of the interleaved v_in.
        const int64_t in = pair ? task : (row * states + i) * heads + h;
        const void* v_in = pair && i == 1 ? p.v_in_b : p.v_in;
        const float* s_in = pair && i == 1 ? p.s_in_b : p.s_in;
        LoadRow(v_in, p.dtype, in * dim, p.head_dim, v.data());
        state.MergeNormalized(v.data(), s_in[in]);
      }
      state.WriteNormalized(v.data());
      StoreRow(p.v_out, p.dtype, task * dim, p.head_dim, v.data());
      if (p.s_out) p.s_out[task] = state.lse();
    };
  });
}

}  // namespace attnd::kernels::cpu
