#include "server/core/request_rules.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "server/core/validation.h"

namespace attnd::server {

absl::StatusOr<ValidatedPlan> CheckCreatePlan(const v1::CreatePlanRequest& request,
                                              const Pool& pool) {
  return ValidatePlan(request, pool.geometry(), pool.name());
}

absl::Status CheckPlanPages(const ValidatedPlan& plan, const PoolAttachment& mine,
                            const PageAllocator& allocator, absl::string_view pool_name) {
  if (auto s = CheckPagesHeld(plan.spec.kv_indices, "kv_indices", mine.held, pool_name); !s.ok()) {
    return s;
  }
  return CheckPagesUnshared(plan.written_pages, allocator, mine.held, mine.pinned);
}
namespace {

// Room a reply needs around its payload (field tags, lengths, the Session stream's envelope).
constexpr uint64_t kReplyOverheadBytes = 256;

bool HasData(const v1::Tensor& t) { return t.data_case() != v1::Tensor::DATA_NOT_SET; }

absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// `completion` is a Completion value, and `wait_event_id` (if set) names an event of this
// session: returns the event (null when none is named).
absl::StatusOr<kernels::Event*> CheckCompletion(EventMap& events, const std::string& wait_event_id,
                                                v1::Completion completion) {
  if (completion != v1::COMPLETION_SYNC && completion != v1::COMPLETION_ASYNC) {
    return absl::InvalidArgumentError(
        absl::StrCat("completion=", static_cast<int>(completion), " is not a Completion value"));
  }
  if (wait_event_id.empty()) return nullptr;
  auto it = events.find(wait_event_id);
  if (it == events.end()) return NotOwnedError("wait_event_id", wait_event_id, kNoSuchEvent);
  return it->second.get();
}

// Bytes of the tensors a Run returns inline (o when it names no buffer, lse likewise when asked
// for), from the plan's shapes: what the reply will carry, known before anything runs.
uint64_t InlineReplyBytes(const Plan& plan, const v1::RunRequest& request) {
  const uint64_t rows =
      static_cast<uint64_t>(plan.qo_tokens) * static_cast<uint64_t>(plan.num_qo_heads);
  uint64_t bytes = 0;
  if (!HasData(request.o())) {
    // o has q's dtype (an unknown one is refused later; count it as the widest).
    const uint64_t elem =
        request.q().dtype() == v1::DTYPE_FLOAT16 || request.q().dtype() == v1::DTYPE_BFLOAT16 ? 2
                                                                                              : 4;
    bytes += rows * static_cast<uint64_t>(plan.pool->geometry().head_dim) * elem;
  }
  if (request.options().return_lse() && !HasData(request.lse())) bytes += rows * sizeof(float);
  return bytes;
}

// k and v: both or neither, [qo_tokens, num_kv_heads, head_dim] in the pool's kv dtype.
absl::Status BindKv(TensorBindings& bindings, const Plan& plan, const v1::Tensor& k,
                    const v1::Tensor& v, bool required, int* k_index, int* v_index) {
  *k_index = *v_index = -1;
  const bool has_k = HasData(k), has_v = HasData(v);
  if (!has_k && !has_v && !required) return absl::OkStatus();
  if (!has_k) {
    return absl::InvalidArgumentError(required ? "k has no data: set inline_data or buffer"
                                               : "v is set but k is not; give both or neither");
  }
  if (!has_v) {
    return absl::InvalidArgumentError(required ? "v has no data: set inline_data or buffer"
                                               : "k is set but v is not; give both or neither");
  }
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

absl::Status CheckReplyFits(uint64_t max_message_bytes, std::string_view what, uint64_t bytes,
                            std::string_view advice) {
  if (max_message_bytes == 0 || bytes + kReplyOverheadBytes <= max_message_bytes) {
    return absl::OkStatus();
  }
  return absl::ResourceExhaustedError(
      absl::StrCat(Absl(what), ": the reply would be up to ", bytes + kReplyOverheadBytes,
                   " bytes, over --max_message_bytes=", max_message_bytes, "; ", Absl(advice)));
}

absl::StatusOr<RunCall> CheckRun(const RequestScope& scope, const Plan& plan,
                                 const v1::RunRequest& request, TensorBindings& bindings,
                                 v1::RunResponse* response) {
  RunCall call;
  call.appends = HasData(request.k()) || HasData(request.v());
  if (call.appends) {
    if (auto s = CheckPlanWritable(plan, scope.session_id); !s.ok()) return s;
  }
  call.async = request.completion() == v1::COMPLETION_ASYNC;
  if (call.async && request.o().data_case() != v1::Tensor::kBuffer) {
    return absl::InvalidArgumentError(
        "completion=COMPLETION_ASYNC needs o in a registered buffer (inline outputs would need "
        "a synchronous copy); set o.buffer or use COMPLETION_SYNC");
  }
  if (call.async && request.options().return_lse() &&
      request.lse().data_case() != v1::Tensor::kBuffer) {
    return absl::InvalidArgumentError(
        "completion=COMPLETION_ASYNC with options.return_lse needs lse in a registered buffer");
  }
  if (auto s = CheckReplyFits(scope.max_message_bytes, "Run", InlineReplyBytes(plan, request),
                              "write o and lse to registered buffers instead of receiving "
                              "them inline");
      !s.ok()) {
    return s;
  }
  auto wait_on = CheckCompletion(scope.events, request.wait_event_id(), request.completion());
  if (!wait_on.ok()) return wait_on.status();
  call.wait_on = *wait_on;

  const PoolGeometry& g = plan.pool->geometry();
  if (auto s = ValidateLayer(request.layer(), g.num_layers); !s.ok()) return s;
  if (!HasData(request.q())) {
    return absl::InvalidArgumentError("q has no data: set inline_data or buffer");
  }
  auto q_dtype = ValidateQueryDType(request.q(), scope.backend);
  if (!q_dtype.ok()) return q_dtype.status();
  call.q_dtype = *q_dtype;
  auto options = ValidateOptions(request.options(), plan.batch_size);
  if (!options.ok()) return options.status();
  call.options = *options;
  const bool want_lse = request.options().return_lse();
  if (!want_lse && HasData(request.lse())) {
    return absl::InvalidArgumentError("lse is set but options.return_lse is false");
  }

  const std::vector<int64_t> q_shape = {plan.qo_tokens, plan.num_qo_heads, g.head_dim};
  auto q_index = bindings.AddInput(request.q(), "q", call.q_dtype, q_shape);
  if (!q_index.ok()) return q_index.status();
  call.q = *q_index;
  if (auto s =
          BindKv(bindings, plan, request.k(), request.v(), /*required=*/false, &call.k, &call.v);
      !s.ok()) {
    return s;
  }
  auto o_index = bindings.AddOutput(HasData(request.o()) ? &request.o() : nullptr, "o",
                                    call.q_dtype, q_shape, response->mutable_o());
  if (!o_index.ok()) return o_index.status();
  call.o = *o_index;
  if (want_lse) {
    auto index = bindings.AddOutput(HasData(request.lse()) ? &request.lse() : nullptr, "lse",
                                    kernels::DType::kFloat32, {plan.qo_tokens, plan.num_qo_heads},
                                    response->mutable_lse());
    if (!index.ok()) return index.status();
    call.lse = *index;
  }
  if (HasData(request.o())) response->clear_o();  // o goes to the client's buffer
  return call;
}

absl::StatusOr<AppendKvCall> CheckAppendKv(const RequestScope& scope, const Plan& plan,
                                           const v1::AppendKvRequest& request,
                                           TensorBindings& bindings) {
  AppendKvCall call;
  if (auto s = CheckPlanWritable(plan, scope.session_id); !s.ok()) return s;
  auto wait_on = CheckCompletion(scope.events, request.wait_event_id(), request.completion());
  if (!wait_on.ok()) return wait_on.status();
  call.wait_on = *wait_on;
  call.async = request.completion() == v1::COMPLETION_ASYNC;
  if (auto s = ValidateLayer(request.layer(), plan.pool->geometry().num_layers); !s.ok()) {
    return s;
  }
  if (auto s =
          BindKv(bindings, plan, request.k(), request.v(), /*required=*/true, &call.k, &call.v);
      !s.ok()) {
    return s;
  }
  return call;
}

}  // namespace attnd::server
