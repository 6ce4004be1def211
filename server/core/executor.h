// Launches one layer of a plan: AppendKv and Run (optionally appending k/v first), and the
// state merges (MergeState, MergeStates), on requests that request_rules.h checked already
// (CheckRun / CheckAppendKv / CheckMergeState / CheckMergeStates): maps the bound tensors (see
// TensorBindings), calls the backend and completes the response. Decides nothing about the
// request. The caller holds the session's mutex.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "attnd/v1/attnd.pb.h"
#include "server/core/plan.h"
#include "server/core/request_rules.h"
#include "server/core/tensor_bindings.h"

namespace attnd::server {

struct TransferCounts {
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
};

// Runs `call` (from CheckRun, which filled `bindings` and shaped `response`).
absl::Status ExecuteRun(const Plan& plan, const v1::RunRequest& request, const RunCall& call,
                        TensorBindings& bindings, const ExecContext& ctx, v1::RunResponse* response,
                        TransferCounts* counts);

// Appends `call`'s k and v (from CheckAppendKv) into the plan's pages.
absl::Status ExecuteAppendKv(const Plan& plan, const v1::AppendKvRequest& request,
                             const AppendKvCall& call, TensorBindings& bindings,
                             const ExecContext& ctx, TransferCounts* counts);

// Runs `call` (from CheckRunRagged) over `plan`, the prepared RaggedPlanOf(call).
absl::Status ExecuteRunRagged(const kernels::PreparedPlan& plan,
                              const v1::RunRaggedRequest& request, const RaggedRunCall& call,
                              TensorBindings& bindings, const ExecContext& ctx,
                              v1::RunRaggedResponse* response, TransferCounts* counts);

// Merges `call`'s states (from CheckMergeState / CheckMergeStates, which filled `bindings` and
// shaped the response's inline outputs).
absl::Status ExecuteMerge(const MergeCall& call, TensorBindings& bindings, const ExecContext& ctx,
                          TransferCounts* counts);

}  // namespace attnd::server
