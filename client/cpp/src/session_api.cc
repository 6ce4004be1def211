#include "attnd/client/session_api.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "attnd/client/tensor.h"

namespace attnd::client {
namespace {

using Response = v1::SessionResponse;

// Checks that a successful response carries the expected result.
absl::Status ExpectResult(const Response& response, Response::ResultCase expected,
                          const char* command) {
  if (response.result_case() == expected) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("attnd returned result case ",
                                          static_cast<int>(response.result_case()), " for ",
                                          command, " (expected ", static_cast<int>(expected), ")"));
}

// `*out` = the elements of `tensor` when it came back inline (left empty otherwise).
absl::Status DecodeInline(const v1::Tensor& tensor, std::vector<float>* out) {
  if (tensor.data_case() != v1::Tensor::kInlineData) return absl::OkStatus();
  absl::StatusOr<std::vector<float>> values = TensorToFloats(tensor);
  if (!values.ok()) return values.status();
  *out = std::move(*values);
  return absl::OkStatus();
}

// The fields every merge request has besides its inputs.
template <typename Request, typename Args>
void SetMergeOutputs(Args& args, Request& request) {
  if (args.v_out) *request.mutable_v_out() = std::move(*args.v_out);
  if (args.s_out) *request.mutable_s_out() = std::move(*args.s_out);
  request.set_omit_s(args.omit_s);
  request.set_wait_event_id(std::move(args.wait_event_id));
  request.set_completion(args.completion);
}

// The inline o and lse of a Run or RunRagged.
template <typename Response>
absl::StatusOr<RunOutput> DecodeRun(absl::StatusOr<Response> response) {
  if (!response.ok()) return response.status();
  RunOutput output;
  if (auto s = DecodeInline(response->o(), &output.o); !s.ok()) return s;
  if (auto s = DecodeInline(response->lse(), &output.lse); !s.ok()) return s;
  return output;
}

template <typename Response>
absl::StatusOr<MergeOutput> DecodeMerge(absl::StatusOr<Response> response) {
  if (!response.ok()) return response.status();
  MergeOutput output;
  if (auto s = DecodeInline(response->v(), &output.v); !s.ok()) return s;
  if (auto s = DecodeInline(response->s(), &output.s); !s.ok()) return s;
  return output;
}

}  // namespace

// Each raw call: wrap the request into its oneof slot, execute, unwrap the matching result.
#define ATTND_RAW_CALL(Name, field)                                                       \
  absl::StatusOr<v1::Name##Response> SessionApi::Name(const v1::Name##Request& request) { \
    v1::SessionRequest wrapped;                                                           \
    *wrapped.mutable_##field() = request;                                                 \
    absl::StatusOr<Response> response = Execute(std::move(wrapped));                      \
    if (!response.ok()) return response.status();                                         \
    if (auto s = ExpectResult(*response, Response::k##Name, #Name); !s.ok()) return s;    \
    return std::move(*response->mutable_##field());                                       \
  }
ATTND_SESSION_COMMANDS(ATTND_RAW_CALL)
#undef ATTND_RAW_CALL

absl::StatusOr<v1::ServerInfo> SessionApi::GetServerInfo() {
  v1::SessionRequest wrapped;
  wrapped.mutable_get_server_info();
  absl::StatusOr<Response> response = Execute(std::move(wrapped));
  if (!response.ok()) return response.status();
  if (auto s = ExpectResult(*response, Response::kServerInfo, "GetServerInfo"); !s.ok()) return s;
  return std::move(*response->mutable_server_info());
}

// ---- Typed calls ---------------------------------------------------------------------------

absl::StatusOr<v1::PoolInfo> SessionApi::CreatePool(const PoolSpec& spec) {
  v1::CreatePoolRequest request;
  request.set_name(spec.name);
  request.set_num_layers(spec.num_layers);
  request.set_num_kv_heads(spec.num_kv_heads);
  request.set_head_dim(spec.head_dim);
  request.set_page_size(spec.page_size);
  request.set_kv_dtype(spec.kv_dtype);
  request.set_num_pages(spec.num_pages);
  request.set_memory_budget_bytes(spec.memory_budget_bytes);
  request.mutable_k_scale()->Add(spec.k_scale.begin(), spec.k_scale.end());
  request.mutable_v_scale()->Add(spec.v_scale.begin(), spec.v_scale.end());
  request.set_layout(v1::KV_LAYOUT_NHD);
  absl::StatusOr<v1::CreatePoolResponse> response = CreatePool(request);
  if (!response.ok()) return response.status();
  return std::move(*response->mutable_pool());
}

absl::StatusOr<v1::PoolInfo> SessionApi::AttachPool(const std::string& name,
                                                    const std::string& attach_token) {
  v1::AttachPoolRequest request;
  request.set_name(name);
  request.set_attach_token(attach_token);
  absl::StatusOr<v1::AttachPoolResponse> response = AttachPool(request);
  if (!response.ok()) return response.status();
  return std::move(*response->mutable_pool());
}

absl::StatusOr<v1::PoolInfo> SessionApi::DescribePool(const std::string& pool_id) {
  v1::DescribePoolRequest request;
  request.set_pool_id(pool_id);
  absl::StatusOr<v1::DescribePoolResponse> response = DescribePool(request);
  if (!response.ok()) return response.status();
  return std::move(*response->mutable_pool());
}

absl::Status SessionApi::DeletePool(const std::string& pool_id) {
  v1::DeletePoolRequest request;
  request.set_pool_id(pool_id);
  return DeletePool(request).status();
}

absl::StatusOr<PageGrant> SessionApi::AllocatePages(const std::string& pool_id, int32_t count) {
  v1::AllocatePagesRequest request;
  request.set_pool_id(pool_id);
  request.set_count(count);
  absl::StatusOr<v1::AllocatePagesResponse> response = AllocatePages(request);
  if (!response.ok()) return response.status();
  PageGrant grant;
  grant.page_ids.assign(response->page_ids().begin(), response->page_ids().end());
  grant.free_pages = response->free_pages();
  return grant;
}

absl::StatusOr<int64_t> SessionApi::FreePages(const std::string& pool_id,
                                              const std::vector<int32_t>& page_ids) {
  v1::FreePagesRequest request;
  request.set_pool_id(pool_id);
  request.mutable_page_ids()->Add(page_ids.begin(), page_ids.end());
  absl::StatusOr<v1::FreePagesResponse> response = FreePages(request);
  if (!response.ok()) return response.status();
  return response->free_pages();
}

absl::StatusOr<std::vector<int32_t>> SessionApi::ForkPages(const std::string& pool_id,
                                                           const std::vector<int32_t>& page_ids,
                                                           const std::string& target_grant) {
  v1::ForkPagesRequest request;
  request.set_pool_id(pool_id);
  request.mutable_page_ids()->Add(page_ids.begin(), page_ids.end());
  request.set_target_grant(target_grant);
  absl::StatusOr<v1::ForkPagesResponse> response = ForkPages(request);
  if (!response.ok()) return response.status();
  return std::vector<int32_t>(response->refcounts().begin(), response->refcounts().end());
}

absl::StatusOr<std::string> SessionApi::RegisterSharedMemory(const SharedMemoryRegion& region,
                                                             uint64_t size_bytes) {
  if (peer_link_ == nullptr) {
    return absl::FailedPreconditionError(
        "this session has no peer connection to pass shared memory over (open it through a "
        "Client on a unix socket)");
  }
  absl::StatusOr<std::string> token = peer_link_->SendFd(region.fd());
  if (!token.ok()) return token.status();
  v1::RegisterBufferRequest request;
  request.mutable_shared_memory_fd()->set_fd_token(*token);
  request.set_size_bytes(size_bytes);
  absl::StatusOr<v1::RegisterBufferResponse> response = RegisterBuffer(request);
  if (!response.ok()) return response.status();
  return std::move(*response->mutable_buffer_id());
}

absl::StatusOr<std::string> SessionApi::RegisterCudaIpc(const std::string& ipc_handle,
                                                        int32_t device, uint64_t size_bytes) {
  v1::RegisterBufferRequest request;
  request.mutable_cuda_ipc()->set_ipc_handle(ipc_handle);
  request.mutable_cuda_ipc()->set_device(device);
  request.set_size_bytes(size_bytes);
  absl::StatusOr<v1::RegisterBufferResponse> response = RegisterBuffer(request);
  if (!response.ok()) return response.status();
  return std::move(*response->mutable_buffer_id());
}

absl::Status SessionApi::UnregisterBuffer(const std::string& buffer_id) {
  v1::UnregisterBufferRequest request;
  request.set_buffer_id(buffer_id);
  return UnregisterBuffer(request).status();
}

absl::StatusOr<PlanInfo> SessionApi::CreatePlan(const PlanSpec& spec) {
  v1::CreatePlanRequest request;
  request.set_pool_id(spec.pool_id);
  request.set_kind(spec.kind);
  request.set_num_qo_heads(spec.num_qo_heads);
  request.mutable_kv_indptr()->Add(spec.kv_indptr.begin(), spec.kv_indptr.end());
  request.mutable_kv_indices()->Add(spec.kv_indices.begin(), spec.kv_indices.end());
  request.mutable_kv_last_page_len()->Add(spec.kv_last_page_len.begin(),
                                          spec.kv_last_page_len.end());
  request.mutable_qo_indptr()->Add(spec.qo_indptr.begin(), spec.qo_indptr.end());
  for (const CascadeLevelSpec& level : spec.cascade_levels) {
    v1::CascadeLevel* out = request.add_cascade_levels();
    out->mutable_qo_indptr()->Add(level.qo_indptr.begin(), level.qo_indptr.end());
    out->mutable_kv_indptr()->Add(level.kv_indptr.begin(), level.kv_indptr.end());
    out->mutable_kv_indices()->Add(level.kv_indices.begin(), level.kv_indices.end());
    out->mutable_kv_last_page_len()->Add(level.kv_last_page_len.begin(),
                                         level.kv_last_page_len.end());
  }
  request.set_custom_mask(spec.custom_mask);
  request.set_q_dtype(spec.q_dtype);
  absl::StatusOr<v1::CreatePlanResponse> response = CreatePlan(request);
  if (!response.ok()) return response.status();
  PlanInfo info;
  info.plan_id = response->plan_id();
  info.batch_size = response->batch_size();
  info.qo_tokens = response->qo_tokens();
  info.kv_tokens = response->kv_tokens();
  return info;
}

absl::StatusOr<PlanInfo> SessionApi::UpdatePlan(const std::string& plan_id,
                                                const std::vector<PlanDeltaSpec>& deltas) {
  v1::UpdatePlanRequest request;
  request.set_plan_id(plan_id);
  for (const PlanDeltaSpec& delta : deltas) {
    v1::PlanDelta* out = request.add_deltas();
    if (const auto* grow = std::get_if<PlanGrow>(&delta)) {
      v1::PlanDelta::Grow* g = out->mutable_grow();
      g->set_request(grow->request);
      g->set_num_tokens(grow->num_tokens);
      g->mutable_new_pages()->Add(grow->new_pages.begin(), grow->new_pages.end());
      g->set_qo_len(grow->qo_len);
    } else if (const auto* leave = std::get_if<PlanLeave>(&delta)) {
      out->mutable_leave()->set_request(leave->request);
    } else {
      const auto& join = std::get<PlanJoin>(delta);
      v1::PlanDelta::Join* j = out->mutable_join();
      j->mutable_kv_indices()->Add(join.kv_indices.begin(), join.kv_indices.end());
      j->set_kv_last_page_len(join.kv_last_page_len);
      j->set_qo_len(join.qo_len);
    }
  }
  absl::StatusOr<v1::UpdatePlanResponse> response = UpdatePlan(request);
  if (!response.ok()) return response.status();
  PlanInfo info;
  info.plan_id = plan_id;
  info.batch_size = response->batch_size();
  info.qo_tokens = response->qo_tokens();
  info.kv_tokens = response->kv_tokens();
  return info;
}

absl::Status SessionApi::DeletePlan(const std::string& plan_id) {
  v1::DeletePlanRequest request;
  request.set_plan_id(plan_id);
  return DeletePlan(request).status();
}

absl::Status SessionApi::AppendKv(const std::string& plan_id, int32_t layer, v1::Tensor k,
                                  v1::Tensor v) {
  v1::AppendKvRequest request;
  request.set_plan_id(plan_id);
  request.set_layer(layer);
  *request.mutable_k() = std::move(k);
  *request.mutable_v() = std::move(v);
  return AppendKv(request).status();
}

absl::StatusOr<v1::RunResponse> SessionApi::Run(RunArgs args) {
  v1::RunRequest request;
  request.set_plan_id(std::move(args.plan_id));
  request.set_layer(args.layer);
  *request.mutable_q() = std::move(args.q);
  if (args.k) *request.mutable_k() = std::move(*args.k);
  if (args.v) *request.mutable_v() = std::move(*args.v);
  if (args.o) *request.mutable_o() = std::move(*args.o);
  if (args.lse) *request.mutable_lse() = std::move(*args.lse);
  if (args.sinks) *request.mutable_sinks() = std::move(*args.sinks);
  *request.mutable_options() = std::move(args.options);
  request.set_wait_event_id(std::move(args.wait_event_id));
  request.set_completion(args.completion);
  return Run(request);
}

absl::StatusOr<RunOutput> SessionApi::RunAndDecode(RunArgs args) {
  return DecodeRun(Run(std::move(args)));
}

absl::StatusOr<v1::RunRaggedResponse> SessionApi::RunRagged(RunRaggedArgs args) {
  v1::RunRaggedRequest request;
  *request.mutable_q() = std::move(args.q);
  *request.mutable_k() = std::move(args.k);
  *request.mutable_v() = std::move(args.v);
  request.mutable_qo_indptr()->Add(args.qo_indptr.begin(), args.qo_indptr.end());
  request.mutable_kv_indptr()->Add(args.kv_indptr.begin(), args.kv_indptr.end());
  if (args.o) *request.mutable_o() = std::move(*args.o);
  if (args.lse) *request.mutable_lse() = std::move(*args.lse);
  if (args.sinks) *request.mutable_sinks() = std::move(*args.sinks);
  *request.mutable_options() = std::move(args.options);
  request.set_wait_event_id(std::move(args.wait_event_id));
  request.set_completion(args.completion);
  return RunRagged(request);
}

absl::StatusOr<RunOutput> SessionApi::RunRaggedAndDecode(RunRaggedArgs args) {
  return DecodeRun(RunRagged(std::move(args)));
}

absl::StatusOr<v1::MergeStateResponse> SessionApi::MergeState(MergeStateArgs args) {
  v1::MergeStateRequest request;
  *request.mutable_v_a() = std::move(args.v_a);
  *request.mutable_s_a() = std::move(args.s_a);
  *request.mutable_v_b() = std::move(args.v_b);
  *request.mutable_s_b() = std::move(args.s_b);
  SetMergeOutputs(args, request);
  return MergeState(request);
}

absl::StatusOr<MergeOutput> SessionApi::MergeStateAndDecode(MergeStateArgs args) {
  return DecodeMerge(MergeState(std::move(args)));
}

absl::Status SessionApi::MergeStateInPlace(v1::Tensor v, v1::Tensor s, v1::Tensor v_other,
                                           v1::Tensor s_other) {
  if (v.data_case() != v1::Tensor::kBuffer || s.data_case() != v1::Tensor::kBuffer) {
    return absl::InvalidArgumentError(
        "MergeStateInPlace: v and s must be buffer slices (they receive the merged state); use "
        "MergeState for inline tensors");
  }
  MergeStateArgs args;
  args.v_out = v;
  args.s_out = s;
  args.v_a = std::move(v);
  args.s_a = std::move(s);
  args.v_b = std::move(v_other);
  args.s_b = std::move(s_other);
  return MergeState(std::move(args)).status();
}

absl::StatusOr<v1::MergeStatesResponse> SessionApi::MergeStates(MergeStatesArgs args) {
  v1::MergeStatesRequest request;
  *request.mutable_v() = std::move(args.v);
  *request.mutable_s() = std::move(args.s);
  SetMergeOutputs(args, request);
  return MergeStates(request);
}

absl::StatusOr<MergeOutput> SessionApi::MergeStatesAndDecode(MergeStatesArgs args) {
  return DecodeMerge(MergeStates(std::move(args)));
}

}  // namespace attnd::client
