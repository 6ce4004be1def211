// Runs one layer of a plan: AppendKv and Run (optionally appending k/v first). Validates the
// request's layer, tensors and options completely, binds the tensors (see TensorBindings), calls
// the backend and builds the response. The caller holds the session's mutex and has already
// checked that the plan's written pages are unshared when k/v are given.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnd/v1/attnd.pb.h"
#include "server/core/plan.h"
#include "server/core/tensor_bindings.h"

namespace attnd::server {

struct TransferCounts {
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
};

// Bytes of the tensors a Run returns inline (o when it names no buffer, lse likewise when asked
// for), from the plan's shapes: what the reply will carry, known before anything runs.
uint64_t InlineReplyBytes(const Plan& plan, const v1::RunRequest& request);

absl::StatusOr<v1::RunResponse> ExecuteRun(const Plan& plan, const v1::RunRequest& request,
                                           const ExecContext& ctx, TransferCounts* counts);

absl::Status ExecuteAppendKv(const Plan& plan, const v1::AppendKvRequest& request,
                             const ExecContext& ctx, TransferCounts* counts);

}  // namespace attnd::server
