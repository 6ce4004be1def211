#include "server/core/executor.h"

namespace attnd::server {
namespace {

// The mapped sinks of a checked Run or RunRagged (backend memory), or null.
template <typename Call>
const float* SinksOf(const Call& call, const TensorBindings& bindings) {
  return call.sinks >= 0 ? static_cast<const float*>(bindings.pointer(call.sinks)) : nullptr;
}

}  // namespace

absl::Status ExecuteRun(const Plan& plan, const v1::RunRequest& request, const RunCall& call,
                        TensorBindings& bindings, const ExecContext& ctx, v1::RunResponse* response,
                        TransferCounts* counts) {
  if (auto s = bindings.Materialize(); !s.ok()) return s;
  kernels::RunArgs args;
  args.plan = plan.prepared.get();
  args.layer = plan.pool->LayerView(request.layer());
  args.q = bindings.pointer(call.q);
  args.o = bindings.pointer(call.o);
  args.lse = call.lse >= 0 ? static_cast<float*>(bindings.pointer(call.lse)) : nullptr;
  args.q_dtype = call.q_dtype;
  args.k_new = call.k >= 0 ? bindings.pointer(call.k) : nullptr;
  args.v_new = call.v >= 0 ? bindings.pointer(call.v) : nullptr;
  args.kv_new_dtype = call.kv_new_dtype;
  args.options = call.options;
  args.options.sinks = SinksOf(call, bindings);
  args.rope_offsets_host =
      request.options().rope_offsets_size() > 0 ? request.options().rope_offsets().data() : nullptr;
  args.stream = ctx.stream;
  if (auto s = ctx.backend.Attention(args); !s.ok()) return s;
  if (auto s = bindings.Complete(); !s.ok()) return s;
  // lse went to the client's buffer.
  if (call.lse >= 0 && request.lse().data_case() != v1::Tensor::DATA_NOT_SET) {
    response->clear_lse();
  }
  counts->bytes_in += bindings.bytes_in();
  counts->bytes_out += bindings.bytes_out();
  return absl::OkStatus();
}

absl::Status ExecuteAppendKv(const Plan& plan, const v1::AppendKvRequest& request,
                             const AppendKvCall& call, TensorBindings& bindings,
                             const ExecContext& ctx, TransferCounts* counts) {
  if (auto s = bindings.Materialize(); !s.ok()) return s;
  if (auto s = ctx.backend.AppendKv(*plan.prepared, plan.pool->LayerView(request.layer()),
                                    bindings.pointer(call.k), bindings.pointer(call.v),
                                    call.kv_new_dtype, ctx.stream);
      !s.ok()) {
    return s;
  }
  if (auto s = bindings.Complete(); !s.ok()) return s;
  counts->bytes_in += bindings.bytes_in();
  return absl::OkStatus();
}

absl::Status ExecuteRunRagged(const kernels::PreparedPlan& plan,
                              const v1::RunRaggedRequest& request, const RaggedRunCall& call,
                              TensorBindings& bindings, const ExecContext& ctx,
                              v1::RunRaggedResponse* response, TransferCounts* counts) {
  if (auto s = bindings.Materialize(); !s.ok()) return s;
  kernels::RaggedRunArgs args;
  args.plan = &plan;
  args.q = bindings.pointer(call.q);
  args.o = bindings.pointer(call.o);
  args.lse = call.lse >= 0 ? static_cast<float*>(bindings.pointer(call.lse)) : nullptr;
  args.q_dtype = call.shape.dtype;
  args.k = bindings.pointer(call.k);
  args.v = bindings.pointer(call.v);
  args.options = call.options;
  args.options.sinks = SinksOf(call, bindings);
  args.rope_offsets_host =
      request.options().rope_offsets_size() > 0 ? request.options().rope_offsets().data() : nullptr;
  args.stream = ctx.stream;
  if (auto s = ctx.backend.RaggedAttention(args); !s.ok()) return s;
  if (auto s = bindings.Complete(); !s.ok()) return s;
  if (call.lse >= 0 && request.lse().data_case() != v1::Tensor::DATA_NOT_SET) {
    response->clear_lse();  // lse went to the client's buffer
  }
  counts->bytes_in += bindings.bytes_in();
  counts->bytes_out += bindings.bytes_out();
  return absl::OkStatus();
}

absl::Status ExecuteMerge(const MergeCall& call, TensorBindings& bindings, const ExecContext& ctx,
                          TransferCounts* counts) {
  if (auto s = bindings.Materialize(); !s.ok()) return s;
  kernels::MergeStatesParams params = call.params;
  params.v_in = bindings.pointer(call.v_in);
  params.s_in = static_cast<const float*>(bindings.pointer(call.s_in));
  if (call.v_in_b >= 0) {
    params.v_in_b = bindings.pointer(call.v_in_b);
    params.s_in_b = static_cast<const float*>(bindings.pointer(call.s_in_b));
  }
  params.v_out = bindings.pointer(call.v_out);
  params.s_out = call.s_out >= 0 ? static_cast<float*>(bindings.pointer(call.s_out)) : nullptr;
  if (auto s = ctx.backend.MergeStates(params, ctx.stream); !s.ok()) return s;
  if (auto s = bindings.Complete(); !s.ok()) return s;
  counts->bytes_in += bindings.bytes_in();
  counts->bytes_out += bindings.bytes_out();
  return absl::OkStatus();
}

}  // namespace attnd::server
