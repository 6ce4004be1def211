// Cascade (shared-prefix) attention on any Backend, FlashInfer's MultiLevelCascadeAttentionWrapper
// built from the backend's own plans and kernels: a plan of L levels (PlanSpec::cascade_levels,
// then the spec's own table as the last level). Shared level l is a prefill plan whose "requests"
// are its groups: all query rows of a group attend the group's pages (a shared prefix, read once
// for the whole group, which is the point); the last level is the ordinary decode / prefill
// plan. Each level gives the attention state (o_l, lse_l) of every query row and head over its
// keys; the states over disjoint key sets merge (MergeStates, natural-log LSE) into attention
// over all of them.
//
// Options per level: sm_scale and logits_soft_cap apply to every level (they act on each logit);
// causal applies to the last level only (a prefix precedes every query of its group, so every
// prefix key is visible); attention sinks are folded in once, by the last level (its lse then
// holds the sink, and the merge keeps it once); RoPE on the fly and sliding windows are refused
// (they need each key's position within the whole sequence, which a level does not know).
//
// Header-only: the CPU and the CUDA backends both call it from their Prepare / Attention /
// AppendKv (neither library links the other); nothing here knows of gRPC or sessions.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "attnd/kernels/backend.h"
#include "attnd/kernels/types.h"

namespace attnd::kernels {

// A prepared cascade plan: one prepared plan per level and the levels' workspaces, allocated
// here once (not per run, stream-ordered: Backend::AllocateStreamOrdered) and freed with the
// plan. Members are destroyed in reverse order: workspaces, then the level plans. Runs of one plan
// must be ordered (one stream), as for every plan: they share the workspaces.
class CascadePlan final : public PreparedPlan {
 public:
  explicit CascadePlan(PlanSpec spec) : PreparedPlan(std::move(spec)) {}
  std::vector<std::unique_ptr<PreparedPlan>> shared;  // [L-1] prefill plans of the shared levels
  std::unique_ptr<PreparedPlan> last;                 // the spec's own table, no levels
  // o of the shared levels: [L-1][qo_tokens][num_qo_heads][head_dim] in the run's q dtype,
  // sized for 4-byte elements (the widest q dtype: the dtype is the run's, not the plan's).
  std::unique_ptr<BackendMemory> o_work;
  // lse of every level, natural log: [L][qo_tokens][num_qo_heads] float32.
  std::unique_ptr<BackendMemory> lse_work;
};

inline const CascadePlan* AsCascadePlan(const PreparedPlan* plan) {
  return dynamic_cast<const CascadePlan*>(plan);
}

// The plan the backend runs for a run or append on `plan`: the last level of a cascade plan
// (appends go there only), else `plan` itself.
inline const PreparedPlan& OwnLevel(const PreparedPlan& plan) {
  const CascadePlan* cascade = AsCascadePlan(&plan);
  return cascade != nullptr ? *cascade->last : plan;
}

// Bytes of backend memory a cascade plan's workspaces take (0 without levels).
inline uint64_t CascadeWorkspaceBytes(int64_t num_shared_levels, int64_t qo_tokens,
                                      int64_t num_qo_heads, int64_t head_dim) {
  if (num_shared_levels == 0) return 0;
  const uint64_t cells = static_cast<uint64_t>(qo_tokens) * static_cast<uint64_t>(num_qo_heads);
  return cells * (static_cast<uint64_t>(num_shared_levels) * static_cast<uint64_t>(head_dim) * 4 +
                  static_cast<uint64_t>(num_shared_levels + 1) * sizeof(float));
}

// Prepares a plan with cascade levels on `backend` (which calls it from its Prepare): checks that
// each level's groups cover the batch's query rows, prepares every level, allocates the
// workspaces. The caller (the daemon: request_rules) has checked the levels' page tables, their
// pages and the group boundaries; the backend's Prepare checks each level's table again.
inline absl::StatusOr<std::unique_ptr<PreparedPlan>> PrepareCascade(Backend& backend, PlanSpec spec,
                                                                    Stream* stream) {
  const int64_t rows = spec.qo_tokens();
  for (size_t l = 0; l < spec.cascade_levels.size(); ++l) {
    const CascadeLevel& level = spec.cascade_levels[l];
    const size_t groups = level.kv_last_page_len.size();
    if (groups == 0 || level.qo_indptr.size() != groups + 1 ||
        level.kv_indptr.size() != groups + 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cascade level ", l, ": ", groups, " groups (kv_last_page_len) but ",
          level.qo_indptr.size(), " qo_indptr and ", level.kv_indptr.size(), " kv_indptr entries"));
    }
    if (level.qo_indptr.back() != rows) {
      return absl::InvalidArgumentError(absl::StrCat("cascade level ", l, ": qo_indptr ends at ",
                                                     level.qo_indptr.back(), ", the plan has ",
                                                     rows, " query rows"));
    }
  }
  PlanSpec last = spec;
  last.cascade_levels.clear();
  auto plan = std::make_unique<CascadePlan>(std::move(spec));
  const PlanSpec& s = plan->spec();
  for (const CascadeLevel& level : s.cascade_levels) {
    PlanSpec shared;
    shared.kind = AttentionKind::kPrefill;
    shared.num_qo_heads = s.num_qo_heads;
    shared.num_kv_heads = s.num_kv_heads;
    shared.head_dim = s.head_dim;
    shared.page_size = s.page_size;
    shared.kv_dtype = s.kv_dtype;
    shared.qo_indptr = level.qo_indptr;
    shared.kv_indptr = level.kv_indptr;
    shared.kv_indices = level.kv_indices;
    shared.kv_last_page_len = level.kv_last_page_len;
    auto prepared = backend.Prepare(std::move(shared), stream);
    if (!prepared.ok()) {
      return absl::Status(
          prepared.status().code(),
          absl::StrCat("cascade level ", plan->shared.size(), ": ", prepared.status().message()));
    }
    plan->shared.push_back(*std::move(prepared));
  }
  auto prepared = backend.Prepare(std::move(last), stream);
  if (!prepared.ok()) return prepared.status();
  plan->last = *std::move(prepared);

  const int64_t num_shared = static_cast<int64_t>(plan->shared.size());
  const uint64_t cells = static_cast<uint64_t>(rows) * static_cast<uint64_t>(s.num_qo_heads);
  // Stream-ordered: deleting a plan (one per decode step in an engine) must not sync the device.
  auto o_work = backend.AllocateStreamOrdered(
      static_cast<size_t>(cells * static_cast<uint64_t>(num_shared * s.head_dim) * 4), stream);
  if (!o_work.ok()) return o_work.status();
  auto lse_work = backend.AllocateStreamOrdered(
      static_cast<size_t>(cells * (num_shared + 1) * sizeof(float)), stream);
  if (!lse_work.ok()) return lse_work.status();
  plan->o_work = *std::move(o_work);
  plan->lse_work = *std::move(lse_work);
  return std::unique_ptr<PreparedPlan>(std::move(plan));
}

// The options a cascade run may use: RoPE on the fly and windows are refused (see the top).
inline absl::Status CheckCascadeOptions(const AttentionOptions& options) {
  if (options.pos_encoding != PosEncoding::kNone) {
    return absl::InvalidArgumentError(
        "options.pos_encoding: RoPE on the fly is not supported on a cascade plan (a level does "
        "not know its keys' positions in the sequence); rotate q and k before storing them");
  }
  if (options.window_left >= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "options.window_left=", options.window_left,
        ": sliding windows are not supported on a cascade plan (a window crosses levels)"));
  }
  return absl::OkStatus();
}

// One layer of attention over a cascade plan (args.plan is `plan`): the shared levels into the
// workspaces, the last level (with the append of k_new / v_new) into args.o, then the merges:
// (o_0, lse_0) with level 1 in place, ..., and with the last level into args.o / args.lse. The
// shared levels only write the workspaces, so a run that a later check refuses leaves o, lse
// and the cache as they were.
inline absl::Status CascadeAttention(Backend& backend, const CascadePlan& plan,
                                     const RunArgs& args) {
  if (auto s = CheckCascadeOptions(args.options); !s.ok()) return s;
  const PlanSpec& spec = plan.spec();
  const int64_t cells = spec.qo_tokens() * spec.num_qo_heads;
  const size_t o_level_bytes =
      static_cast<size_t>(cells) * static_cast<size_t>(spec.head_dim) * DTypeSize(args.q_dtype);
  char* o_work = static_cast<char*>(plan.o_work->data());
  float* lse_work = static_cast<float*>(plan.lse_work->data());
  const size_t num_shared = plan.shared.size();

  for (size_t l = 0; l < num_shared; ++l) {
    RunArgs level = args;
    level.plan = plan.shared[l].get();
    level.o = o_work + l * o_level_bytes;
    level.lse = lse_work + l * cells;
    level.k_new = level.v_new = nullptr;  // a level's pages are read only
    level.options.causal = false;         // the prefix precedes every query of its group
    level.options.sinks = nullptr;        // folded in once, by the last level
    level.rope_offsets_host = nullptr;
    if (auto s = backend.Attention(level); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("cascade level ", l, ": ", s.message()));
    }
  }
  RunArgs own = args;
  own.plan = plan.last.get();
  own.lse = lse_work + num_shared * cells;
  if (auto s = backend.Attention(own); !s.ok()) return s;

  for (size_t l = 1; l <= num_shared; ++l) {
    MergeStatesParams m;
    m.dtype = args.q_dtype;
    m.num_rows = static_cast<int32_t>(spec.qo_tokens());
    m.num_states = 2;
    m.num_heads = spec.num_qo_heads;
    m.head_dim = spec.head_dim;
    m.v_in = o_work;
    m.s_in = lse_work;
    const bool final_merge = l == num_shared;
    m.v_in_b = final_merge ? args.o : o_work + l * o_level_bytes;
    m.s_in_b = lse_work + l * cells;
    m.v_out = final_merge ? args.o : o_work;  // in place: exactly v_in_b's, or v_in's, memory
    m.s_out = final_merge ? args.lse : lse_work;
    if (auto s = backend.MergeStates(m, args.stream); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace attnd::kernels
