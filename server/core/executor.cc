#include "server/core/executor.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "server/core/validation.h"

namespace attnd::server {
namespace {

bool HasData(const v1::Tensor& t) { return t.data_case() != v1::Tensor::DATA_NOT_SET; }

// k and v: both or neither, [qo_tokens, num_kv_heads, head_dim] in the pool's kv dtype.
absl::Status AddKv(TensorBindings& bindings, const Plan& plan, const v1::Tensor& k,
                   const v1::Tensor& v, bool required, int* k_index, int* v_index) {
  *k_index = *v_index = -1;
  const bool has_k = HasData(k), has_v = HasData(v);
  if (!has_k && !has_v && !required) return absl::OkStatus();
  if (!has_k) return absl::InvalidArgumentError(required ? "k has no data: set inline_data or buffer"
                                                         : "v is set but k is not; give both or neither");
  if (!has_v) return absl::InvalidArgumentError(required ? "v has no data: set inline_data or buffer"
                                                         : "k is set but v is not; give both or neither");
  const PoolGeometry& g = plan.pool->geometry();
  const std::vector<int64_t> shape = {plan.qo_tokens, g.num_kv_heads, g.head_dim};
  auto ki = bindings.AddInput(k, "k", g.kv_dtype, shape);
  if (!ki.ok()) return ki.status();
  auto vi = bindings.AddInput(v, "v", g.kv_dtype, shape);
  if (!vi.ok()) return vi.status();
  *k_index = *ki;
  *v_index = *vi;
  return absl::OkStatus();
}

}  // namespace

uint64_t InlineReplyBytes(const Plan& plan, const v1::RunRequest& request) {
  const uint64_t rows = static_cast<uint64_t>(plan.qo_tokens) *
                        static_cast<uint64_t>(plan.num_qo_heads);
  uint64_t bytes = 0;
  if (!HasData(request.o())) {
    // o has q's dtype (an unknown one is refused later; count it as the widest).
    const uint64_t elem = request.q().dtype() == v1::DTYPE_FLOAT16 ||
                                  request.q().dtype() == v1::DTYPE_BFLOAT16
                              ? 2
                              : 4;
    bytes += rows * static_cast<uint64_t>(plan.pool->geometry().head_dim) * elem;
  }
  if (request.options().return_lse() && !HasData(request.lse())) bytes += rows * sizeof(float);
  return bytes;
}

absl::StatusOr<v1::RunResponse> ExecuteRun(const Plan& plan, const v1::RunRequest& request,
                                           const ExecContext& ctx, TransferCounts* counts) {
  const PoolGeometry& g = plan.pool->geometry();
  if (auto s = ValidateLayer(request.layer(), g.num_layers); !s.ok()) return s;
  if (!HasData(request.q())) {
    return absl::InvalidArgumentError("q has no data: set inline_data or buffer");
  }
  auto q_dtype = ValidateQueryDType(request.q(), ctx.backend.info());
  if (!q_dtype.ok()) return q_dtype.status();
  auto options = ValidateOptions(request.options(), plan.batch_size);
  if (!options.ok()) return options.status();
  const bool want_lse = request.options().return_lse();
  if (!want_lse && HasData(request.lse())) {
    return absl::InvalidArgumentError("lse is set but options.return_lse is false");
  }

  v1::RunResponse response;
  TensorBindings bindings(ctx);
  const std::vector<int64_t> q_shape = {plan.qo_tokens, plan.num_qo_heads, g.head_dim};
  auto q_index = bindings.AddInput(request.q(), "q", *q_dtype, q_shape);
  if (!q_index.ok()) return q_index.status();
  int k_index = -1, v_index = -1;
  if (auto s = AddKv(bindings, plan, request.k(), request.v(), /*required=*/false, &k_index,
                     &v_index);
      !s.ok()) {
    return s;
  }
  auto o_index = bindings.AddOutput(HasData(request.o()) ? &request.o() : nullptr, "o", *q_dtype,
                                    q_shape, response.mutable_o());
  if (!o_index.ok()) return o_index.status();
  int lse_index = -1;
  if (want_lse) {
    auto index = bindings.AddOutput(HasData(request.lse()) ? &request.lse() : nullptr, "lse",
                                    kernels::DType::kFloat32, {plan.qo_tokens, plan.num_qo_heads},
                                    response.mutable_lse());
    if (!index.ok()) return index.status();
    lse_index = *index;
  }
  if (HasData(request.o())) response.clear_o();  // o goes to the client's buffer

  if (auto s = bindings.Materialize(); !s.ok()) return s;
  kernels::RunArgs args;
  args.plan = plan.prepared.get();
  args.layer = plan.pool->LayerView(request.layer());
  args.q = bindings.pointer(*q_index);
  args.o = bindings.pointer(*o_index);
  args.lse = lse_index >= 0 ? static_cast<float*>(bindings.pointer(lse_index)) : nullptr;
  args.q_dtype = *q_dtype;
  args.k_new = k_index >= 0 ? bindings.pointer(k_index) : nullptr;
  args.v_new = v_index >= 0 ? bindings.pointer(v_index) : nullptr;
  args.options = *options;
  args.rope_offsets_host =
      request.options().rope_offsets_size() > 0 ? request.options().rope_offsets().data() : nullptr;
  args.stream = ctx.stream;
  if (auto s = ctx.backend.Attention(args); !s.ok()) return s;
  if (auto s = bindings.Complete(); !s.ok()) return s;
  if (want_lse && HasData(request.lse())) response.clear_lse();
  counts->bytes_in += bindings.bytes_in();
  counts->bytes_out += bindings.bytes_out();
  return response;
}

absl::Status ExecuteAppendKv(const Plan& plan, const v1::AppendKvRequest& request,
                             const ExecContext& ctx, TransferCounts* counts) {
  const PoolGeometry& g = plan.pool->geometry();
  if (auto s = ValidateLayer(request.layer(), g.num_layers); !s.ok()) return s;
  TensorBindings bindings(ctx);
  int k_index = -1, v_index = -1;
  if (auto s = AddKv(bindings, plan, request.k(), request.v(), /*required=*/true, &k_index,
                     &v_index);
      !s.ok()) {
    return s;
  }
  if (auto s = bindings.Materialize(); !s.ok()) return s;
  if (auto s = ctx.backend.AppendKv(*plan.prepared, plan.pool->LayerView(request.layer()),
                                    bindings.pointer(k_index), bindings.pointer(v_index),
                                    ctx.stream);
      !s.ok()) {
    return s;
  }
  if (auto s = bindings.Complete(); !s.ok()) return s;
  counts->bytes_in += bindings.bytes_in();
  return absl::OkStatus();
}

}  // namespace attnd::server
