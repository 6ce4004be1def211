// The rules of the requests that write pages or launch kernels, one entry point per request:
// CheckRun and CheckAppendKv decide everything about a request (fields, completion and the event
// to wait on, page writability, tensor dtypes, shapes, inline sizes, buffer slices and their
// alignment, attention options, the reply's size) and return what the launch needs. Core calls
// them before anything is enqueued, written or launched, so a refused request changed nothing.
// CreatePlan's rules are CheckCreatePlan (fields, before anything is charged) and CheckPlanPages
// (page ownership and writability, under the pool's lock right before the pins: BuildPlan);
// UpdatePlan's are CheckUpdatePlan and CheckPlanUpdatePages, the same way (ApplyPlanUpdate).
// MergeState and MergeStates (no plan, no pool) are CheckMergeState and CheckMergeStates; a
// RunRagged (K/V as tensors, no pool) is CheckRunRagged.
//
// validation.h holds the field-level checks these rules are made of; tensor_bindings.h checks one
// tensor (Add*) and later maps it (Materialize). The executor (executor.h) only launches.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnd/kernels/backend.h"
#include "attnd/v1/attnd.pb.h"
#include "server/core/plan.h"
#include "server/core/pool.h"
#include "server/core/tensor_bindings.h"
#include "server/core/validation.h"

namespace attnd::server {

using EventMap = absl::flat_hash_map<std::string, std::unique_ptr<kernels::Event>>;

// What the rules know about the caller: the session and the daemon's limits.
struct RequestScope {
  const std::string& session_id;
  EventMap& events;  // the session's registered events (wait_event_id)
  const kernels::BackendInfo& backend;
  uint64_t max_message_bytes = 0;  // gRPC send limit (--max_message_bytes); 0 = none
  // Where a reply's inline outputs are charged (CheckReplyFits); null host: not charged.
  HostBudget* host = nullptr;
  std::shared_ptr<SessionUsage> usage;  // the session's share of `host`
  HostCharge* reply_charge = nullptr;   // kept by the front until the reply is written
};

// A reply of up to `bytes` must fit `max_message_bytes` (0 = no limit): RESOURCE_EXHAUSTED
// "<what>: the reply would be up to N bytes, over --max_message_bytes=M; <advice>". Then the
// bytes are charged to the session's and the daemon's host budget (scope.reply_charge) before
// anything is allocated for them: RESOURCE_EXHAUSTED naming --max_session_host_bytes or
// --max_host_bytes when they would pass it.
absl::Status CheckReplyFits(const RequestScope& scope, std::string_view what, uint64_t bytes,
                            std::string_view advice);

// CreatePlan, in two steps. CheckCreatePlan: every field against the pool's geometry (kind,
// heads, the page table's shape and page ids, lengths), before any quota is charged.
// CheckPlanPages: every page the plan reads is held by this session (PERMISSION_DENIED) and every
// page its appends write is not shared with another session (FAILED_PRECONDITION); BuildPlan
// calls it under the pool's lock right before it pins the pages, so no FreePages or ForkPages
// can come between the check and the pins.
// A cascade plan's levels (CreatePlanRequest.cascade_levels, attnd.proto CascadeLevel) are
// checked here too: each level's table as the plan's (fields named cascade_levels[l].*), its
// groups covering the query rows in whole requests, its pages not written by the plan's
// appends; CheckPlanPages checks that the session holds them.
inline constexpr int kMaxCascadeLevels = 16;
absl::StatusOr<ValidatedPlan> CheckCreatePlan(const v1::CreatePlanRequest& request,
                                              const Pool& pool);
absl::Status CheckPlanPages(const ValidatedPlan& plan, const PoolAttachment& mine,
                            const PageAllocator& allocator, absl::string_view pool_name);

// UpdatePlan (streamed page-table updates; attnd.proto PlanDelta), in two steps as CreatePlan.
// CheckUpdatePlan: every delta against the plan (a plan of this session: cascade plans and plans
// with a custom mask are refused) and its pool's geometry: the requests named (in range, one
// delta each), lengths and their page counts, page ids in range, query rows, the updated
// batch's limits, no page appended to by two requests; builds the updated table and what
// changes with it (pins, written pages), touching only the requests the deltas name (and, on
// the plan's first update, building its page index). Nothing changes here.
// CheckPlanUpdatePages: every page a delta names is held by this session (PERMISSION_DENIED)
// and every page the update makes the plan write is not shared with another session
// (FAILED_PRECONDITION, CheckPagesUnshared's rule); ApplyPlanUpdate (plan.h) calls it under the
// pool's lock right before the pins.
absl::StatusOr<PlanUpdate> CheckUpdatePlan(const v1::UpdatePlanRequest& request, const Plan& plan);
absl::Status CheckPlanUpdatePages(const PlanUpdate& update, const PoolAttachment& mine,
                                  const PageAllocator& allocator, absl::string_view pool_name);

// A checked Run: what the launch needs. Binding indices refer to the TensorBindings the check
// filled (-1 = not bound).
struct RunCall {
  bool appends = false;               // k and v given: appended before attention
  bool async = false;                 // COMPLETION_ASYNC
  kernels::Event* wait_on = nullptr;  // the session's stream waits on it first (wait_event_id)
  kernels::DType q_dtype = kernels::DType::kFloat16;
  // k and v's type: the pool's, or float32/float16/bfloat16 on an fp8 pool (quantized on the
  // way in, kernels::AppendKvParams::new_dtype).
  kernels::DType kv_new_dtype = kernels::DType::kFloat16;
  kernels::AttentionOptions options;  // options.sinks is set from `sinks` once mapped
  int q = -1, k = -1, v = -1, o = -1, lse = -1;
  int sinks = -1;  // RunRequest.sinks, float32 [num_qo_heads], or -1: none
};

// Every rule of a Run on `plan` (a plan of this session). Binds q, k, v, o, lse and sinks into
// `bindings` (checked, not yet mapped) and shapes the inline outputs in `response`.
absl::StatusOr<RunCall> CheckRun(const RequestScope& scope, const Plan& plan,
                                 const v1::RunRequest& request, TensorBindings& bindings,
                                 v1::RunResponse* response);

// A checked RunRagged: its shape and the bindings of its tensors.
struct RaggedRunCall {
  bool async = false;
  kernels::Event* wait_on = nullptr;
  kernels::AttentionOptions options;
  RaggedShape shape;
  int32_t batch_size = 0;
  int q = -1, k = -1, v = -1, o = -1, lse = -1;
  int sinks = -1;  // RunRaggedRequest.sinks, or -1: none
};
// The batch's plan (kernels::RaggedPlanSpec: one page per K/V row), to Prepare, and the host
// memory it and its backend copy take, which the caller charges before it builds it.
kernels::PlanSpec RaggedPlanOf(const RaggedRunCall& call, const v1::RunRaggedRequest& request);
uint64_t RaggedPlanHostBytes(const RaggedRunCall& call);

// Every rule of a RunRagged (attnd.proto RunRaggedRequest): completion and the event to wait on,
// q's dtype and shape against the backend, k and v, qo_indptr and kv_indptr against them, the
// options, the outputs (buffer slices, or inline in `response`, whose size must fit the reply).
// Binds q, k, v, o, lse and sinks into `bindings` and shapes the inline outputs.
absl::StatusOr<RaggedRunCall> CheckRunRagged(const RequestScope& scope,
                                             const v1::RunRaggedRequest& request,
                                             TensorBindings& bindings,
                                             v1::RunRaggedResponse* response);

// A checked AppendKv.
struct AppendKvCall {
  bool async = false;
  kernels::Event* wait_on = nullptr;
  kernels::DType kv_new_dtype = kernels::DType::kFloat16;  // as RunCall::kv_new_dtype
  int k = -1, v = -1;
};

// Every rule of an AppendKv on `plan`; binds k and v into `bindings`.
absl::StatusOr<AppendKvCall> CheckAppendKv(const RequestScope& scope, const Plan& plan,
                                           const v1::AppendKvRequest& request,
                                           TensorBindings& bindings);

// A checked MergeState or MergeStates: the backend's parameters without their pointers (dtype,
// shape, the pair form's second state) and the bindings of the tensors (-1 = not bound: the
// pair form's v_in_b and s_in_b for MergeStates; s_out with omit_s).
struct MergeCall {
  bool async = false;
  kernels::Event* wait_on = nullptr;
  kernels::MergeStatesParams params;  // pointers are null; ExecuteMerge fills them in
  int v_in = -1, s_in = -1, v_in_b = -1, s_in_b = -1, v_out = -1, s_out = -1;
};

// Every rule of a MergeState (the attnd.proto section "Merging attention states"): completion
// and the event to wait on, v_a's dtype and shape, v_b, s_a, s_b of the same shape, the outputs
// (buffer slices, or inline in `response`, whose size must fit the reply), and that an output
// overlaps no input or other output unless it is exactly that input's bytes (in place). Binds
// the tensors into `bindings` (checked, not yet mapped) and shapes the inline outputs.
absl::StatusOr<MergeCall> CheckMergeState(const RequestScope& scope,
                                          const v1::MergeStateRequest& request,
                                          TensorBindings& bindings,
                                          v1::MergeStateResponse* response);
// The same for a MergeStates: v [seq_len, num_states, num_heads, head_dim] and s.
absl::StatusOr<MergeCall> CheckMergeStates(const RequestScope& scope,
                                           const v1::MergeStatesRequest& request,
                                           TensorBindings& bindings,
                                           v1::MergeStatesResponse* response);

}  // namespace attnd::server
