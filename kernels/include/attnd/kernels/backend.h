// The backend interface: what the daemon needs from an attention engine (memory, streams, plans,
// append_kv, attention, state merging). The CPU reference backend and the CUDA backend implement
// it; the daemon picks one at start-up. Nothing here knows about gRPC or sessions.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "attnd/kernels/custom_mask.h"
#include "attnd/kernels/types.h"

namespace attnd::kernels {

// One allocation in the backend's memory (host memory for CPU, device memory for CUDA).
// Freed when destroyed.
class BackendMemory {
 public:
  virtual ~BackendMemory() = default;
  virtual void* data() const = 0;
  virtual size_t size() const = 0;
  // CUDA: the cudaIpcMemHandle_t (64 bytes) of the allocation, so other processes can map it.
  // Empty where the backend has no IPC.
  virtual std::string ipc_handle() const { return {}; }
};

// An ordered queue of work (a cudaStream_t on CUDA; the CPU backend runs work inline).
class Stream {
 public:
  virtual ~Stream() = default;
  virtual void* native() const = 0;  // cudaStream_t, or null on CPU
};

// A device event usable across processes (cudaEvent_t created with cudaEventInterprocess, or one
// opened from another process's cudaIpcEventHandle_t). Destroyed with the object.
class Event {
 public:
  virtual ~Event() = default;
  virtual void* native() const = 0;  // cudaEvent_t
  // The cudaIpcEventHandle_t (64 bytes) of an event this process created; empty for opened ones.
  virtual std::string ipc_handle() const { return {}; }
};

// What a backend can do, reported in ServerInfo and used for validation.
struct BackendInfo {
  std::string name;    // "cpu" or "cuda"
  std::string device;  // human-readable device name
  int32_t device_ordinal = -1;
  uint64_t memory_total_bytes = 0;  // device memory (CUDA) or physical memory (CPU)
  std::vector<DType> kv_dtypes;
  std::vector<DType> q_dtypes;
  std::vector<int32_t> head_dims;
  std::vector<int32_t> page_sizes;  // empty = any page size >= 1
  bool cuda_ipc = false;
  // Byte alignment every tensor pointer handed to the backend must have (q, o, lse, new k/v,
  // merge inputs and outputs); 0 = the element size is enough. The daemon checks buffer-slice
  // offsets against it before anything runs (CUDA: 16, for the kernels' 16-byte vector accesses).
  uint32_t tensor_alignment_bytes = 0;
  // Which kernel each shape takes, one line per family and head dim (ServerInfo.kernel_paths).
  std::vector<std::string> kernel_paths;
};

// One shared level of a cascade plan (PlanSpec::cascade_levels; attnd.proto CascadeLevel): the
// batch's query rows in groups, group g (rows qo_indptr[g] .. qo_indptr[g+1]) attending pages
// kv_indices[kv_indptr[g] .. kv_indptr[g+1]) (a shared prefix: every key visible to every row of
// the group, no causal mask), its last page holding kv_last_page_len[g] tokens. Read only.
struct CascadeLevel {
  std::vector<int32_t> qo_indptr;         // [G + 1], from 0 to the plan's qo_tokens
  std::vector<int32_t> kv_indptr;         // [G + 1]
  std::vector<int32_t> kv_indices;        // [kv_indptr[G]]
  std::vector<int32_t> kv_last_page_len;  // [G]
};

// A batch's page table, already validated by the caller (indptr monotone, page ids in range,
// last_page_len in 1..page_size). qo_indptr is always filled, also for decode (0, 1, ..., B).
struct PlanSpec {
  AttentionKind kind = AttentionKind::kDecode;
  int32_t num_qo_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t page_size = 0;
  DType kv_dtype = DType::kFloat16;
  std::vector<int32_t> kv_indptr;         // [B + 1]
  std::vector<int32_t> kv_indices;        // [kv_indptr[B]]
  std::vector<int32_t> kv_last_page_len;  // [B]
  std::vector<int32_t> qo_indptr;         // [B + 1]
  // A ragged plan (RaggedPlanSpec): K/V given as tensors to RaggedAttention, not pages.
  bool ragged = false;
  // Cascade (shared-prefix) attention, attention/cascade.h: levels 0..L-2 of an L-level plan,
  // outermost first; the table above is the last level (each request's own pages, causal as
  // asked, where appends go). Empty: an ordinary plan.
  std::vector<CascadeLevel> cascade_levels;
  // Custom mask (CreatePlanRequest.custom_mask), prefill plans only: the row-word image of the
  // batch's mask (custom_mask.h), the plan's own kv lengths (the last level's on a cascade plan).
  // Empty: none. Backends hand its view in backend memory to the kernels (AttentionOptions).
  CustomMaskImage custom_mask;
  // CreatePlanRequest.q_dtype: the dtype of every run's q, or unset (any). Backends refuse a
  // combination with kv_dtype they cannot run at Prepare.
  std::optional<DType> q_dtype;

  int32_t batch_size() const { return static_cast<int32_t>(kv_last_page_len.size()); }
  int64_t qo_tokens() const { return qo_indptr.empty() ? 0 : qo_indptr.back(); }
  // Request b's kv_len: (pages - 1) * page_size + kv_last_page_len[b], 0 without pages.
  int64_t kv_len(int32_t b) const {
    const int64_t pages = static_cast<int64_t>(kv_indptr[b + 1]) - kv_indptr[b];
    return pages == 0 ? 0 : (pages - 1) * page_size + kv_last_page_len[b];
  }
};

// The plan of a batch over ragged K/V (RaggedAttention): request b's query rows are
// qo_indptr[b] .. qo_indptr[b+1], its keys rows kv_indptr[b] .. kv_indptr[b+1] of k and v. A
// prefill plan whose pages are single rows (page_size 1, kv_indices 0, 1, ..., every
// kv_last_page_len 1), so that its kv_indptr is the K/V's row indptr; Prepare() it as any plan.
inline PlanSpec RaggedPlanSpec(std::vector<int32_t> qo_indptr, std::vector<int32_t> kv_indptr,
                               int32_t num_qo_heads, int32_t num_kv_heads, int32_t head_dim,
                               DType kv_dtype) {
  PlanSpec spec;
  spec.kind = AttentionKind::kPrefill;
  spec.ragged = true;
  spec.num_qo_heads = num_qo_heads;
  spec.num_kv_heads = num_kv_heads;
  spec.head_dim = head_dim;
  spec.page_size = 1;
  spec.kv_dtype = kv_dtype;
  const int32_t rows = kv_indptr.empty() ? 0 : kv_indptr.back();
  spec.kv_indices.resize(rows > 0 ? static_cast<size_t>(rows) : 0);
  for (int32_t i = 0; i < rows; ++i) spec.kv_indices[i] = i;
  spec.kv_last_page_len.assign(kv_indptr.empty() ? 0 : kv_indptr.size() - 1, 1);
  spec.kv_indptr = std::move(kv_indptr);
  spec.qo_indptr = std::move(qo_indptr);
  return spec;
}

// A plan prepared by a backend: the page table in backend memory plus the backend's own work
// schedule (e.g. the split-KV partition). Shared by all runs (layers) of a step; changed only by
// Backend::UpdatePlan, between runs, in its stream's order.
class PreparedPlan {
 public:
  explicit PreparedPlan(PlanSpec spec) : spec_(std::move(spec)) {}
  virtual ~PreparedPlan() = default;
  const PlanSpec& spec() const { return spec_; }

 protected:
  // For a backend's UpdatePlan that changes its plan in place.
  void ReplaceSpec(PlanSpec spec) { spec_ = std::move(spec); }

 private:
  PlanSpec spec_;
};

// One layer's attention over a prepared plan. All pointers are in backend memory except
// rope_offsets_host. If k_new/v_new are set they are appended first (see AppendKvParams).
struct RunArgs {
  const PreparedPlan* plan = nullptr;
  PagedKV layer;            // data, dtype, geometry and strides; page-table fields are ignored
  const void* q = nullptr;  // [qo_tokens, num_qo_heads, head_dim] q_dtype
  void* o = nullptr;        // [qo_tokens, num_qo_heads, head_dim] q_dtype
  float* lse = nullptr;     // [qo_tokens, num_qo_heads] or null
  DType q_dtype = DType::kFloat16;
  const void* k_new = nullptr;  // [qo_tokens, num_kv_heads, head_dim] kv_new_dtype, or null
  const void* v_new = nullptr;
  // k_new / v_new's type (AppendKvParams::new_dtype): unset = the layer's; float32 / float16 /
  // bfloat16 onto an fp8 layer are quantized with its scales.
  std::optional<DType> kv_new_dtype;
  AttentionOptions options;  // options.rope_offsets is ignored; use rope_offsets_host
  const int32_t* rope_offsets_host = nullptr;  // [batch_size] host memory, or null
  Stream* stream = nullptr;
};

// Prefill/append attention of one batch over K/V given as tensors (no pool): the plan is a
// Prepare()d RaggedPlanSpec, whose kv_indptr and qo_indptr lay out k/v and q. All pointers are
// in backend memory except rope_offsets_host.
struct RaggedRunArgs {
  const PreparedPlan* plan = nullptr;
  const void* q = nullptr;  // [qo_tokens, num_qo_heads, head_dim] q_dtype
  void* o = nullptr;        // [qo_tokens, num_qo_heads, head_dim] q_dtype
  float* lse = nullptr;     // [qo_tokens, num_qo_heads] or null
  DType q_dtype = DType::kFloat16;
  const void* k = nullptr;  // [kv_tokens, num_kv_heads, head_dim] in the plan's kv_dtype, dense
  const void* v = nullptr;
  AttentionOptions options;  // options.rope_offsets is ignored; use rope_offsets_host
  const int32_t* rope_offsets_host = nullptr;  // [batch_size] host memory, or null
  Stream* stream = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual const BackendInfo& info() const = 0;
  // True when backend memory is ordinary host memory (the CPU backend): callers may read and
  // write it directly instead of copying.
  virtual bool host_accessible() const = 0;

  virtual absl::StatusOr<std::unique_ptr<BackendMemory>> Allocate(size_t bytes) = 0;
  // Memory that lives and dies with a plan (e.g. a cascade plan's workspaces), allocated and
  // freed in `stream`'s order: the CUDA backend takes it from the device's memory pool
  // (cudaMallocAsync / cudaFreeAsync, as its plans' page tables), so creating and deleting plans
  // never synchronises the device the way cudaFree does; it must be destroyed before the stream.
  // The default is Allocate.
  virtual absl::StatusOr<std::unique_ptr<BackendMemory>> AllocateStreamOrdered(size_t bytes,
                                                                               Stream* stream) {
    (void)stream;
    return Allocate(bytes);
  }
  // Maps another process's CUDA allocation (cudaIpcOpenMemHandle) and checks that it spans at
  // least size_bytes. FAILED_PRECONDITION on backends without IPC.
  virtual absl::StatusOr<std::unique_ptr<BackendMemory>> OpenIpcBuffer(const std::string& handle,
                                                                       int32_t device,
                                                                       size_t size_bytes) = 0;
  virtual absl::StatusOr<std::unique_ptr<Stream>> CreateStream() = 0;
  virtual absl::Status CopyToBackend(void* dst, const void* src, size_t bytes, Stream* stream) = 0;
  virtual absl::Status CopyToHost(void* dst, const void* src, size_t bytes, Stream* stream) = 0;
  virtual absl::Status Synchronize(Stream* stream) = 0;
  // Sets `bytes` bytes of backend memory at dst to zero, in `stream`'s order. The default serves
  // host-accessible backends (plain memset); device backends override it.
  virtual absl::Status Zero(void* dst, size_t bytes, Stream* stream) {
    (void)stream;
    if (!host_accessible()) {
      return absl::UnimplementedError("Zero: this backend's memory is not host-accessible");
    }
    std::memset(dst, 0, bytes);
    return absl::OkStatus();
  }
  // Zeroes `rows` ranges of `bytes` bytes, the first at dst and each `stride` bytes after the last
  // (the same pages of every layer of a pool), in `stream`'s order: one call for what would be
  // `rows` Zero calls (a device backend issues one 2-D memset, not one per layer). The default
  // calls Zero per row.
  virtual absl::Status ZeroRows(void* dst, size_t bytes, size_t stride, int32_t rows,
                                Stream* stream) {
    for (int32_t r = 0; r < rows; ++r) {
      if (auto s = Zero(static_cast<char*>(dst) + static_cast<size_t>(r) * stride, bytes, stream);
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  // Uploads the page table and computes the backend's schedule.
  virtual absl::StatusOr<std::unique_ptr<PreparedPlan>> Prepare(PlanSpec spec, Stream* stream) = 0;
  // Makes `plan` (prepared by this backend on `stream`) the plan of `spec`, a checked table of
  // the same kind, heads, head_dim, page size and kv dtype (UpdatePlanRequest: streamed
  // page-table updates), as Prepare(spec) would, in `stream`'s order: work enqueued on the stream
  // before the call still runs on the old table, work after it on the new one, and nothing waits
  // for the device. All or nothing: on error `plan` is unchanged and usable. The default
  // prepares a new plan and replaces `plan` with it (the old one is destroyed, which for a
  // stream-ordered backend is ordered after the work already enqueued); backends override it to
  // update in place (the CPU backend swaps the table; the CUDA backend keeps its device
  // allocation while the table fits and uploads only the changed range, cuda_plan.h).
  virtual absl::Status UpdatePlan(std::unique_ptr<PreparedPlan>& plan, PlanSpec spec,
                                  Stream* stream) {
    absl::StatusOr<std::unique_ptr<PreparedPlan>> fresh = Prepare(std::move(spec), stream);
    if (!fresh.ok()) return fresh.status();
    plan = *std::move(fresh);
    return absl::OkStatus();
  }
  // Appends new K/V rows (one per query token of the plan, in new_dtype: the layer's, or
  // quantized onto an fp8 layer, AppendKvParams) into the layer's pages.
  virtual absl::Status AppendKv(const PreparedPlan& plan, const PagedKV& layer, const void* k,
                                const void* v, DType new_dtype, Stream* stream) = 0;
  // Decode or prefill/append attention of one layer (plan.spec().kind decides).
  virtual absl::Status Attention(const RunArgs& args) = 0;
  virtual absl::Status MergeStates(const MergeStatesParams& params, Stream* stream) = 0;
  // Prefill/append attention over ragged K/V (args.plan: a prepared RaggedPlanSpec).
  // UNIMPLEMENTED where the backend has no such kernel.
  virtual absl::Status RaggedAttention(const RaggedRunArgs& args) {
    (void)args;
    return absl::UnimplementedError(
        absl::StrCat("backend '", info().name, "' has no ragged attention"));
  }

  // Interprocess events (async completion). Backends without them (CPU) keep these defaults,
  // which return FAILED_PRECONDITION.
  // Creates an event other processes can open (cudaEventInterprocess | cudaEventDisableTiming).
  virtual absl::StatusOr<std::unique_ptr<Event>> CreateIpcEvent() {
    return absl::FailedPreconditionError(
        absl::StrCat("backend '", info().name, "' has no interprocess events"));
  }
  // Opens another process's event (cudaIpcOpenEventHandle). INVALID_ARGUMENT for a handle of the
  // wrong size.
  virtual absl::StatusOr<std::unique_ptr<Event>> OpenIpcEvent(const std::string& handle,
                                                              int32_t device) {
    (void)handle;
    (void)device;
    return absl::FailedPreconditionError(
        absl::StrCat("backend '", info().name, "' has no interprocess events"));
  }
  // Records `event` on `stream` after the work enqueued so far (cudaEventRecord).
  virtual absl::Status RecordEvent(Event& event, Stream* stream) {
    (void)event;
    (void)stream;
    return absl::FailedPreconditionError("this backend has no events");
  }
  // Makes later work on `stream` wait for the event's last record (cudaStreamWaitEvent).
  virtual absl::Status StreamWaitEvent(Stream* stream, Event& event) {
    (void)event;
    (void)stream;
    return absl::FailedPreconditionError("this backend has no events");
  }

  // OK while the backend can serve; a sticky device error makes it return that error for good.
  virtual absl::Status Health() const { return absl::OkStatus(); }

  // Test hook: puts the device into a sticky error state the way a faulting kernel would (CUDA:
  // a kernel that traps), so tests can see how the daemon reports it. Never called on a request
  // path; the daemon reaches it only through its --testonly_device_fault_after_runs flag.
  // UNIMPLEMENTED where the backend has no device to break (CPU).
  virtual absl::Status InjectDeviceFaultForTesting() {
    return absl::UnimplementedError(
        absl::StrCat("backend '", info().name, "' cannot inject a device fault"));
  }
};

struct CpuBackendOptions {
  int32_t num_threads = 0;  // 0 = std::thread::hardware_concurrency()
};
absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const CpuBackendOptions& options);

struct CudaBackendOptions {
  int32_t device = 0;  // CUDA device ordinal
};
// UNAVAILABLE when attnd was built without CUDA or no CUDA device can be used.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options);

}  // namespace attnd::kernels
