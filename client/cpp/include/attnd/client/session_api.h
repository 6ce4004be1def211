// The commands of an attnd session, independent of how the session is carried.
//
// SessionApi has one primitive, Execute(SessionRequest) -> SessionResponse, implemented by
//   * Session       (session.h): the bidirectional Session stream (the hot path), and
//   * UnarySession  (unary_session.h): OpenSession + one unary RPC per command, with the session
//                   id in the "x-attnd-session" metadata header.
// On top of it, every command has
//   * a raw call taking and returning the wire messages (CreatePool(v1::CreatePoolRequest) ->
//     v1::CreatePoolResponse), and
//   * a typed call taking plain C++ values (CreatePool(PoolSpec) -> v1::PoolInfo).
// Errors are the server's status (code and message unchanged); transport failures come back as
// the gRPC status of the broken call or stream.
//
// Thread-safety: a session object is used by one thread at a time (commands on one session are
// ordered). Use one session per thread, or lock around it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnd/client/peer_link.h"
#include "attnd/client/shared_memory.h"
#include "attnd/v1/attnd.pb.h"
#include "attnd/v1/session_commands.h"

namespace attnd::client {

namespace v1 = ::attnd::v1;

// What CreatePool needs. Exactly one of num_pages / memory_budget_bytes is > 0.
struct PoolSpec {
  std::string name;  // unique per daemon, [A-Za-z0-9_.-]{1,64}
  int32_t num_layers = 1;
  int32_t num_kv_heads = 1;
  int32_t head_dim = 128;
  int32_t page_size = 16;  // tokens per page
  v1::DType kv_dtype = v1::DTYPE_FLOAT16;
  int64_t num_pages = 0;
  uint64_t memory_budget_bytes = 0;
  // FP8 pools only: the dequantization scales (CreatePoolRequest.k_scale / v_scale: empty, one
  // per layer, or one per layer and KV head, layer-major).
  std::vector<float> k_scale, v_scale;
};

// Pages granted by AllocatePages and how many remain free in the pool afterwards.
struct PageGrant {
  std::vector<int32_t> page_ids;
  int64_t free_pages = 0;
};

// One batch's CSR page table (see CreatePlanRequest in attnd.proto):
//   request b uses pages kv_indices[kv_indptr[b] .. kv_indptr[b+1]), its last page holds
//   kv_last_page_len[b] tokens; its query rows are qo_indptr[b] .. qo_indptr[b+1] (decode: may be
//   left empty = one row per request).
// One shared level of a cascade plan (attnd.proto CascadeLevel): group g is query rows
// qo_indptr[g] .. qo_indptr[g+1] (whole requests) and attends the shared prefix pages
// kv_indices[kv_indptr[g] .. kv_indptr[g+1]), no causal mask.
struct CascadeLevelSpec {
  std::vector<int32_t> qo_indptr;         // [groups + 1], from 0 to the plan's qo_tokens
  std::vector<int32_t> kv_indptr;         // [groups + 1]
  std::vector<int32_t> kv_indices;        // [kv_indptr[groups]]
  std::vector<int32_t> kv_last_page_len;  // [groups]
};

struct PlanSpec {
  std::string pool_id;
  v1::AttentionKind kind = v1::ATTENTION_KIND_DECODE;
  int32_t num_qo_heads = 0;
  std::vector<int32_t> kv_indptr;         // [batch + 1]
  std::vector<int32_t> kv_indices;        // [kv_indptr[batch]]
  std::vector<int32_t> kv_last_page_len;  // [batch]
  std::vector<int32_t> qo_indptr;         // [batch + 1] or empty for decode
  // Cascade plans: the shared levels, outermost first; the table above is the last level (each
  // request's own pages). Empty: an ordinary plan.
  std::vector<CascadeLevelSpec> cascade_levels;
  // Prefill plans: a custom mask in the wire's packed form (CreatePlanRequest.custom_mask;
  // attnd::kernels::PackCustomMask of <attnd/kernels/custom_mask.h> packs dense [qo_len, kv_len]
  // masks). Empty: none.
  std::string custom_mask;
  // The dtype every Run gives q in (CreatePlanRequest.q_dtype): combinations the backend cannot
  // run are refused at CreatePlan. DTYPE_UNSPECIFIED: any, checked per Run.
  v1::DType q_dtype = v1::DTYPE_UNSPECIFIED;
};

struct PlanInfo {
  std::string plan_id;
  int32_t batch_size = 0;
  int64_t qo_tokens = 0;  // rows of q the plan expects
  int64_t kv_tokens = 0;  // sum of kv_len over the batch
};

// The changes of a plan's batch between steps (UpdatePlan; attnd.proto PlanDelta): requests are
// named by their index before the update; after it the requests that stayed keep their order
// and the joined ones follow, in the order given.
// Request `request` grows by num_tokens tokens; new_pages (exactly as many as the growth needs
// beyond its last page) are appended after its last page. qo_len: its query rows afterwards,
// prefill plans only (decode plans: leave it 0).
struct PlanGrow {
  int32_t request = 0;
  int32_t num_tokens = 0;
  std::vector<int32_t> new_pages = {};  // (= {}: designated initializers may leave it out)
  int32_t qo_len = 0;
};
// Request `request` leaves the batch.
struct PlanLeave {
  int32_t request = 0;
};
// A request joins at the end with its pages (its last page holding kv_last_page_len tokens) and,
// for prefill plans, its query rows.
struct PlanJoin {
  std::vector<int32_t> kv_indices = {};
  int32_t kv_last_page_len = 0;
  int32_t qo_len = 0;
};
using PlanDeltaSpec = std::variant<PlanGrow, PlanLeave, PlanJoin>;

// One layer of attention. k and v (both or neither) are appended before attention; o and lse name
// output buffer slices, or are left empty to receive the results inline.
struct RunArgs {
  std::string plan_id;
  int32_t layer = 0;
  v1::Tensor q;  // [qo_tokens, num_qo_heads, head_dim]
  // [qo_tokens, num_kv_heads, head_dim], the pool's kv_dtype; on an fp8 pool also float32,
  // float16 or bfloat16 (k and v alike), quantized by the daemon with the pool's scales.
  std::optional<v1::Tensor> k;
  std::optional<v1::Tensor> v;
  std::optional<v1::Tensor> o;    // output slice [qo_tokens, num_qo_heads, head_dim], q's dtype
  std::optional<v1::Tensor> lse;  // output slice [qo_tokens, num_qo_heads] float32
  v1::AttentionOptions options;
  // Async completion (CUDA backend, see attnd.proto "Async completion"): an event registered with
  // RegisterEvent that the daemon's stream waits on before reading inputs, and how to reply.
  std::string wait_event_id;
  v1::Completion completion = v1::COMPLETION_SYNC;
  // Attention sinks (RunRequest.sinks): float32 [num_qo_heads], this layer's learned sink logits
  // (gpt-oss), inline (MakeTensor) or a buffer slice; unset = none. lse then includes the sink.
  std::optional<v1::Tensor> sinks;
};

// Inline results of a Run, decoded to float. lse is empty unless options.return_lse was set and
// no lse buffer was named; o is empty when an output buffer was named.
struct RunOutput {
  std::vector<float> o;    // [qo_tokens, num_qo_heads, head_dim]
  std::vector<float> lse;  // [qo_tokens, num_qo_heads]
};

// Prefill/append attention over K/V given as tensors, no pool (RunRaggedRequest; FlashInfer's
// BatchPrefillWithRaggedKVCacheWrapper): request b's query rows are qo_indptr[b] ..
// qo_indptr[b+1] of q, its keys and values rows kv_indptr[b] .. kv_indptr[b+1] of k and v.
struct RunRaggedArgs {
  v1::Tensor q;                    // [qo_tokens, num_qo_heads, head_dim]
  v1::Tensor k;                    // [kv_tokens, num_kv_heads, head_dim], q's dtype
  v1::Tensor v;                    // k's shape and dtype
  std::vector<int32_t> qo_indptr;  // [batch + 1]
  std::vector<int32_t> kv_indptr;  // [batch + 1]
  std::optional<v1::Tensor> o;     // output slice, or inline
  std::optional<v1::Tensor> lse;   // with options.return_lse
  v1::AttentionOptions options;
  std::string wait_event_id;  // as in RunArgs
  v1::Completion completion = v1::COMPLETION_SYNC;
  std::optional<v1::Tensor> sinks;  // as in RunArgs
};

// A merge of attention states (attnd.proto, "Merging attention states": FlashInfer's
// merge_state / merge_states; s is the natural-log LSE, as Run's lse). Inputs inline or buffer
// slices; v_out and s_out name output buffer slices, or are left empty to receive the results
// inline. An output may be exactly one of the inputs (in place).
struct MergeStateArgs {
  v1::Tensor v_a;  // [seq_len, num_heads, head_dim] float16/bfloat16/float32
  v1::Tensor s_a;  // [seq_len, num_heads] float32
  v1::Tensor v_b;  // v_a's shape and dtype
  v1::Tensor s_b;
  std::optional<v1::Tensor> v_out;  // [seq_len, num_heads, head_dim], v_a's dtype
  std::optional<v1::Tensor> s_out;  // [seq_len, num_heads] float32
  bool omit_s = false;              // no merged s at all
  std::string wait_event_id;        // as in RunArgs
  v1::Completion completion = v1::COMPLETION_SYNC;
};
struct MergeStatesArgs {
  v1::Tensor v;  // [seq_len, num_states, num_heads, head_dim] float16/bfloat16/float32
  v1::Tensor s;  // [seq_len, num_states, num_heads] float32
  std::optional<v1::Tensor> v_out;
  std::optional<v1::Tensor> s_out;
  bool omit_s = false;
  std::string wait_event_id;
  v1::Completion completion = v1::COMPLETION_SYNC;
};
// Inline results of a merge, decoded to float; v is empty when v_out was named, s when s_out was
// named or omit_s set.
struct MergeOutput {
  std::vector<float> v;  // [seq_len, num_heads, head_dim]
  std::vector<float> s;  // [seq_len, num_heads]
};

class SessionApi {
 public:
  virtual ~SessionApi() = default;

  // The process's peer connection (shared memory travels over it); the Client sets it.
  void set_peer_link(std::shared_ptr<PeerLink> link) { peer_link_ = std::move(link); }
  const std::shared_ptr<PeerLink>& peer_link() const { return peer_link_; }

  // The server's id of this session.
  virtual const std::string& session_id() const = 0;

  // The primitive: runs one command (request.command must be set; request_id is assigned by the
  // implementation) and returns its response, or the command's non-OK status.
  virtual absl::StatusOr<v1::SessionResponse> Execute(v1::SessionRequest request) = 0;

  // ---- Raw calls: wire messages in and out -------------------------------------------------
  absl::StatusOr<v1::ServerInfo> GetServerInfo();
  // One per command of ATTND_SESSION_COMMANDS (attnd/v1/session_commands.h):
  //   absl::StatusOr<v1::NameResponse> Name(const v1::NameRequest& request);
  // The async completion commands (RegisterEvent, UnregisterEvent, GetCompletionEvent) need a
  // CUDA daemon; see attnd/client/cuda_ipc.h for the CUDA-side helpers.
#define ATTND_CLIENT_DECLARE_RAW_CALL(Name, field) \
  absl::StatusOr<v1::Name##Response> Name(const v1::Name##Request& request);
  ATTND_SESSION_COMMANDS(ATTND_CLIENT_DECLARE_RAW_CALL)
#undef ATTND_CLIENT_DECLARE_RAW_CALL

  // ---- Typed calls ---------------------------------------------------------------------------
  absl::StatusOr<v1::PoolInfo> CreatePool(const PoolSpec& spec);
  // attach_token: the pool's PoolInfo.attach_token, needed when another principal created it.
  absl::StatusOr<v1::PoolInfo> AttachPool(const std::string& name,
                                          const std::string& attach_token = "");
  absl::StatusOr<v1::PoolInfo> DescribePool(const std::string& pool_id);
  absl::Status DeletePool(const std::string& pool_id);

  absl::StatusOr<PageGrant> AllocatePages(const std::string& pool_id, int32_t count);
  // Returns the pool's free page count afterwards.
  absl::StatusOr<int64_t> FreePages(const std::string& pool_id,
                                    const std::vector<int32_t>& page_ids);
  // Returns the new reference count of each page. target_grant empty = this session; else the
  // receiving session's fork grant (its PoolInfo.fork_grant for this pool).
  absl::StatusOr<std::vector<int32_t>> ForkPages(const std::string& pool_id,
                                                 const std::vector<int32_t>& page_ids,
                                                 const std::string& target_grant = "");

  // Registers `size_bytes` of a shared-memory region: its descriptor goes to the daemon over the
  // peer socket (set_peer_link; the Client sets it), then RegisterBuffer names the token.
  // Returns the buffer id.
  absl::StatusOr<std::string> RegisterSharedMemory(const SharedMemoryRegion& region,
                                                   uint64_t size_bytes);
  // Registers device memory by CUDA IPC handle (64 bytes of cudaIpcMemHandle_t).
  absl::StatusOr<std::string> RegisterCudaIpc(const std::string& ipc_handle, int32_t device,
                                              uint64_t size_bytes);
  absl::Status UnregisterBuffer(const std::string& buffer_id);

  absl::StatusOr<PlanInfo> CreatePlan(const PlanSpec& spec);
  // Changes the plan by deltas, all or nothing (streamed page-table updates: only the changes
  // travel); returns its id and new shape. Runs sent after it use the new table.
  absl::StatusOr<PlanInfo> UpdatePlan(const std::string& plan_id,
                                      const std::vector<PlanDeltaSpec>& deltas);
  absl::Status DeletePlan(const std::string& plan_id);

  absl::Status AppendKv(const std::string& plan_id, int32_t layer, v1::Tensor k, v1::Tensor v);

  absl::StatusOr<v1::RunResponse> Run(RunArgs args);
  // Run, with the inline o (and lse) decoded to float.
  absl::StatusOr<RunOutput> RunAndDecode(RunArgs args);

  // Attention over ragged K/V (no pool); RunRaggedAndDecode decodes the inline o and lse.
  absl::StatusOr<v1::RunRaggedResponse> RunRagged(RunRaggedArgs args);
  absl::StatusOr<RunOutput> RunRaggedAndDecode(RunRaggedArgs args);

  // Merges two attention states per row and head: (v_a, s_a) + (v_b, s_b) -> (v, s).
  absl::StatusOr<v1::MergeStateResponse> MergeState(MergeStateArgs args);
  absl::StatusOr<MergeOutput> MergeStateAndDecode(MergeStateArgs args);
  // FlashInfer's merge_state_in_place: (v, s) becomes the merge of (v, s) and (v_other,
  // s_other). v and s must be buffer slices (they receive the result); INVALID_ARGUMENT else.
  absl::Status MergeStateInPlace(v1::Tensor v, v1::Tensor s, v1::Tensor v_other,
                                 v1::Tensor s_other);
  // Merges num_states states per row and head: v [seq_len, num_states, num_heads, head_dim].
  absl::StatusOr<v1::MergeStatesResponse> MergeStates(MergeStatesArgs args);
  absl::StatusOr<MergeOutput> MergeStatesAndDecode(MergeStatesArgs args);

 private:
  std::shared_ptr<PeerLink> peer_link_;
};

}  // namespace attnd::client
