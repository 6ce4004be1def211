// The CUDA Backend (backend.h): device memory and IPC mappings (RAII), non-blocking streams,
// copies, plans (CudaPlan, cuda_plan.h: page table upload + decode split-KV schedule or prefill
// tiling) and the kernel launches of cuda_launch.h / cuda_prefill.h: an adapter of the Backend
// interface onto them. Host code only (compiled by the host compiler).
//
// Sticky errors: after an error that leaves the CUDA context unusable (illegal address, launch
// failure, ...) every later call fails the same way; the backend remembers the first one and
// reports it from Health() and from every call, so the daemon can go NOT_SERVING.
#include <cuda.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "attnd/kernels/backend.h"
#include "attnd/kernels/backend_checks.h"
#include "attnd/kernels/cascade.h"
#include "attnd/kernels/cuda_launch.h"
#include "attnd/kernels/cuda_prefill.h"
#include "backend/cuda_plan.h"
#include "backend/cuda_status.h"
#include "backend/device_query.h"
#include "backend/fault_kernel.h"
#include "backend/launch_checks.h"
#include "planning/kernel_paths.h"
#include "planning/page_table.h"

namespace attnd::kernels {
namespace {

using cuda::CudaStatus;
using cuda::IsStickyCudaError;

// Remembers the first sticky CUDA error of the process's context.
class StickyError {
 public:
  // Returns the status of e; records it when sticky.
  absl::Status Check(cudaError_t e, std::string_view what) {
    if (e == cudaSuccess) return absl::OkStatus();
    absl::Status s = CudaStatus(e, what);
    if (IsStickyCudaError(e)) Record(s);
    return s;
  }
  // After a failed launcher call (which returned a status, not a code): a sticky error makes
  // every call fail, so peeking at the last error tells whether the context is gone.
  absl::Status AfterFailure(absl::Status s) {
    const cudaError_t e = cudaPeekAtLastError();
    if (IsStickyCudaError(e)) Record(CudaStatus(e, "CUDA context"));
    return s;
  }
  absl::Status Get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }
  // Checks the context from any thread: a sticky error makes every call on the context fail,
  // so a non-blocking query of the legacy stream reports it (cudaErrorNotReady is fine).
  void Probe(int device) {
    cudaError_t e = cudaPeekAtLastError();
    if (!IsStickyCudaError(e) && cudaSetDevice(device) == cudaSuccess) e = cudaStreamQuery(nullptr);
    if (IsStickyCudaError(e)) Record(CudaStatus(e, "CUDA context"));
  }

 private:
  void Record(const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (status_.ok()) {
      status_ = absl::InternalError(
          absl::StrCat("sticky CUDA error, the device is unusable: ", s.message()));
    }
  }
  mutable std::mutex mu_;
  absl::Status status_;
};

// Plan-lifetime memory from the device's memory pool, freed in the order of the stream it was
// allocated on (Backend::AllocateStreamOrdered), like a CudaPlan's page table.
class StreamOrderedMemory final : public BackendMemory {
 public:
  StreamOrderedMemory(void* ptr, size_t size, int device, cudaStream_t stream)
      : ptr_(ptr), size_(size), device_(device), stream_(stream) {}
  ~StreamOrderedMemory() override {
    cudaSetDevice(device_);
    cudaFreeAsync(ptr_, stream_);
  }
  void* data() const override { return ptr_; }
  size_t size() const override { return size_; }

 private:
  void* ptr_;
  size_t size_;
  int device_;
  cudaStream_t stream_;
};

class CudaMemory final : public BackendMemory {
 public:
  CudaMemory(void* ptr, size_t size, int device) : ptr_(ptr), size_(size), device_(device) {}
  ~CudaMemory() override {
    if (ptr_ == nullptr) return;
    int prev = -1;
    cudaGetDevice(&prev);
    cudaSetDevice(device_);
    cudaFree(ptr_);
    if (prev >= 0 && prev != device_) cudaSetDevice(prev);
  }
  void* data() const override { return ptr_; }
  size_t size() const override { return size_; }
  std::string ipc_handle() const override {
    if (ptr_ == nullptr) return {};
    cudaIpcMemHandle_t h;
    if (cudaIpcGetMemHandle(&h, ptr_) != cudaSuccess) {
      cudaGetLastError();  // not sticky; clear it
      return {};
    }
    return std::string(reinterpret_cast<const char*>(&h), sizeof(h));
  }

 private:
  void* ptr_;
  size_t size_;
  int device_;
};

// One cudaIpcOpenMemHandle mapping of another process's allocation (range = its whole size),
// shared by every registration of the same handle and closed with the last of them. A process
// maps a handle once: opening it again and closing that copy (a registration refused for its
// size, say) must not unmap what a live registration still reads.
class IpcMapping {
 public:
  IpcMapping(void* ptr, size_t range, int device) : ptr_(ptr), range_(range), device_(device) {}
  ~IpcMapping() {
    int prev = -1;
    cudaGetDevice(&prev);
    cudaSetDevice(device_);
    cudaIpcCloseMemHandle(ptr_);
    if (prev >= 0 && prev != device_) cudaSetDevice(prev);
  }
  IpcMapping(const IpcMapping&) = delete;
  IpcMapping& operator=(const IpcMapping&) = delete;
  void* ptr() const { return ptr_; }
  size_t range() const { return range_; }

 private:
  void* ptr_;
  size_t range_;
  int device_;
};

// A registered client buffer: the first size bytes of a shared IPC mapping.
class IpcBuffer final : public BackendMemory {
 public:
  IpcBuffer(std::shared_ptr<IpcMapping> mapping, size_t size)
      : mapping_(std::move(mapping)), size_(size) {}
  void* data() const override { return mapping_->ptr(); }
  size_t size() const override { return size_; }

 private:
  std::shared_ptr<IpcMapping> mapping_;
  size_t size_;
};

class CudaStream final : public Stream {
 public:
  CudaStream(cudaStream_t s, int device) : stream_(s), device_(device) {}
  ~CudaStream() override {
    cudaSetDevice(device_);
    cudaStreamDestroy(stream_);
  }
  void* native() const override { return stream_; }

 private:
  cudaStream_t stream_;
  int device_;
};

// An interprocess event: created here (kOwned, exportable) or opened from another process's
// handle (kOpened). cudaEventDestroy releases either kind.
class CudaEvent final : public Event {
 public:
  CudaEvent(cudaEvent_t e, int device, bool owned) : event_(e), device_(device), owned_(owned) {}
  ~CudaEvent() override {
    cudaSetDevice(device_);
    cudaEventDestroy(event_);
  }
  void* native() const override { return event_; }
  std::string ipc_handle() const override {
    if (!owned_) return {};
    cudaIpcEventHandle_t h;
    if (cudaIpcGetEventHandle(&h, event_) != cudaSuccess) {
      cudaGetLastError();
      return {};
    }
    return std::string(reinterpret_cast<const char*>(&h), sizeof(h));
  }

 private:
  cudaEvent_t event_;
  int device_;
  bool owned_;
};

cudaStream_t Native(Stream* s) {
  return s != nullptr ? static_cast<cudaStream_t>(s->native()) : nullptr;
}

// Freed plan memory the device's default memory pool keeps for reuse (release threshold).
constexpr uint64_t kPlanMemoryKeptBytes = uint64_t{256} << 20;

class CudaBackend final : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<Backend>> Create(const CudaBackendOptions& options) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
      cudaGetLastError();
      return absl::UnavailableError(
          absl::StrCat("no usable CUDA device: ",
                       e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount returned 0"));
    }
    if (options.device < 0 || options.device >= count) {
      return absl::UnavailableError(
          absl::StrCat("CUDA device ", options.device, " does not exist (", count, " devices)"));
    }
    e = cudaSetDevice(options.device);
    if (e == cudaSuccess) e = cudaFree(nullptr);  // creates the context now, not on first use
    if (e != cudaSuccess) {
      return absl::UnavailableError(absl::StrCat("cannot initialise CUDA device ", options.device,
                                                 ": ", cudaGetErrorString(e)));
    }
    // Plan memory comes from the device's default memory pool (cudaMallocAsync); keep what plans
    // free cached in the pool instead of returning it to the driver at every synchronisation,
    // so steady-state plan creation never reaches the driver's allocator.
    cudaMemPool_t mem_pool = nullptr;
    if (cudaDeviceGetDefaultMemPool(&mem_pool, options.device) == cudaSuccess) {
      uint64_t keep = kPlanMemoryKeptBytes;
      if (cudaMemPoolSetAttribute(mem_pool, cudaMemPoolAttrReleaseThreshold, &keep) !=
          cudaSuccess) {
        cudaGetLastError();  // not fatal: the pool then returns memory at synchronisations
      }
    } else {
      cudaGetLastError();
    }
    auto backend = std::unique_ptr<CudaBackend>(new CudaBackend(options.device));
    absl::Status s = backend->FillInfo();
    if (!s.ok()) return absl::UnavailableError(s.message());
    return std::unique_ptr<Backend>(std::move(backend));
  }

  const BackendInfo& info() const override { return info_; }
  bool host_accessible() const override { return false; }

  absl::StatusOr<std::unique_ptr<BackendMemory>> Allocate(size_t bytes) override {
    if (auto s = Enter(); !s.ok()) return s;
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky; clear it
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      return absl::ResourceExhaustedError(absl::StrCat("cudaMalloc of ", bytes,
                                                       " bytes failed: device has ", free_b, " of ",
                                                       total_b, " bytes free"));
    }
    if (auto s = sticky_.Check(e, "cudaMalloc"); !s.ok()) return s;
    return std::unique_ptr<BackendMemory>(new CudaMemory(p, bytes, device_));
  }

  absl::StatusOr<std::unique_ptr<BackendMemory>> AllocateStreamOrdered(size_t bytes,
                                                                       Stream* stream) override {
    if (auto s = Enter(); !s.ok()) return s;
    void* p = nullptr;
    const cudaStream_t st = Native(stream);
    const cudaError_t e = cudaMallocAsync(&p, bytes == 0 ? 1 : bytes, st);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky; clear it
      return absl::ResourceExhaustedError(
          absl::StrCat("cudaMallocAsync of ", bytes, " bytes (plan workspace) failed"));
    }
    if (auto s = sticky_.Check(e, "cudaMallocAsync"); !s.ok()) return s;
    return std::unique_ptr<BackendMemory>(new StreamOrderedMemory(p, bytes, device_, st));
  }

  absl::StatusOr<std::unique_ptr<BackendMemory>> OpenIpcBuffer(const std::string& handle,
                                                               int32_t device,
                                                               size_t size_bytes) override {
    if (auto s = Enter(); !s.ok()) return s;
    if (handle.size() != sizeof(cudaIpcMemHandle_t)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "IPC handle has ", handle.size(), " bytes, expected ", sizeof(cudaIpcMemHandle_t)));
    }
    (void)device;  // the exporter's ordinal; the mapping is made on this backend's device
    std::shared_ptr<IpcMapping> mapping;
    {
      // Held across the open: IPC registrations are rare, and one mapping per handle is the
      // point of the cache.
      std::lock_guard<std::mutex> lock(ipc_mutex_);
      auto cached = ipc_mappings_.find(handle);
      if (cached != ipc_mappings_.end()) mapping = cached->second.lock();
      if (mapping == nullptr) {
        cudaIpcMemHandle_t h;
        std::memcpy(&h, handle.data(), sizeof(h));
        void* p = nullptr;
        cudaError_t e = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
        if (e != cudaSuccess) {
          if (!IsStickyCudaError(e)) cudaGetLastError();
          absl::Status s = sticky_.Check(e, "cudaIpcOpenMemHandle");
          return absl::FailedPreconditionError(s.message());
        }
        // The mapping covers the exporter's whole allocation.
        size_t range = 0;
        absl::Status ranged = AllocationSize(p, &range);
        mapping = std::make_shared<IpcMapping>(p, range, device_);
        if (!ranged.ok()) return ranged;
        std::erase_if(ipc_mappings_, [](const auto& entry) { return entry.second.expired(); });
        ipc_mappings_[handle] = mapping;
      }
    }
    if (mapping->range() < size_bytes) {
      return absl::OutOfRangeError(absl::StrCat("IPC buffer spans ", mapping->range(),
                                                " bytes, fewer than the declared ", size_bytes));
    }
    return std::unique_ptr<BackendMemory>(new IpcBuffer(std::move(mapping), size_bytes));
  }

  absl::Status Zero(void* dst, size_t bytes, Stream* stream) override {
    if (auto s = Enter(); !s.ok()) return s;
    cudaStream_t st = stream != nullptr ? static_cast<cudaStream_t>(stream->native()) : nullptr;
    return sticky_.Check(cudaMemsetAsync(dst, 0, bytes, st), "cudaMemsetAsync");
  }

  absl::Status ZeroRows(void* dst, size_t bytes, size_t stride, int32_t rows,
                        Stream* stream) override {
    if (rows <= 1 || stride < bytes) return Backend::ZeroRows(dst, bytes, stride, rows, stream);
    if (auto s = Enter(); !s.ok()) return s;
    cudaStream_t st = stream != nullptr ? static_cast<cudaStream_t>(stream->native()) : nullptr;
    // One API call for every layer's copy of the pages (~3 us of host time each otherwise: a
    // 32-layer pool's AllocatePages of 4 scattered pages made 128 of them).
    return sticky_.Check(cudaMemset2DAsync(dst, stride, 0, bytes, static_cast<size_t>(rows), st),
                         "cudaMemset2DAsync");
  }

  absl::StatusOr<std::unique_ptr<Stream>> CreateStream() override {
    if (auto s = Enter(); !s.ok()) return s;
    cudaStream_t st = nullptr;
    if (auto s = sticky_.Check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking),
                               "cudaStreamCreate");
        !s.ok()) {
      return s;
    }
    return std::unique_ptr<Stream>(new CudaStream(st, device_));
  }

  absl::StatusOr<std::unique_ptr<Event>> CreateIpcEvent() override {
    if (auto s = Enter(); !s.ok()) return s;
    cudaEvent_t e = nullptr;
    if (auto s = sticky_.Check(
            cudaEventCreateWithFlags(&e, cudaEventInterprocess | cudaEventDisableTiming),
            "cudaEventCreate(interprocess)");
        !s.ok()) {
      return s;
    }
    return std::unique_ptr<Event>(new CudaEvent(e, device_, /*owned=*/true));
  }

  absl::StatusOr<std::unique_ptr<Event>> OpenIpcEvent(const std::string& handle,
                                                      int32_t device) override {
    if (auto s = Enter(); !s.ok()) return s;
    if (handle.size() != sizeof(cudaIpcEventHandle_t)) {
      return absl::InvalidArgumentError(absl::StrCat("IPC event handle has ", handle.size(),
                                                     " bytes, expected ",
                                                     sizeof(cudaIpcEventHandle_t)));
    }
    (void)device;
    cudaIpcEventHandle_t h;
    std::memcpy(&h, handle.data(), sizeof(h));
    cudaEvent_t e = nullptr;
    const cudaError_t err = cudaIpcOpenEventHandle(&e, h);
    if (err != cudaSuccess) {
      if (!IsStickyCudaError(err)) cudaGetLastError();
      absl::Status s = sticky_.Check(err, "cudaIpcOpenEventHandle");
      return absl::FailedPreconditionError(s.message());
    }
    return std::unique_ptr<Event>(new CudaEvent(e, device_, /*owned=*/false));
  }

  absl::Status RecordEvent(Event& event, Stream* stream) override {
    if (auto s = Enter(); !s.ok()) return s;
    return sticky_.Check(cudaEventRecord(static_cast<cudaEvent_t>(event.native()), Native(stream)),
                         "cudaEventRecord");
  }

  absl::Status StreamWaitEvent(Stream* stream, Event& event) override {
    if (auto s = Enter(); !s.ok()) return s;
    return sticky_.Check(
        cudaStreamWaitEvent(Native(stream), static_cast<cudaEvent_t>(event.native()), 0),
        "cudaStreamWaitEvent");
  }

  absl::Status CopyToBackend(void* dst, const void* src, size_t bytes, Stream* stream) override {
    if (auto s = Enter(); !s.ok()) return s;
    return sticky_.Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, Native(stream)),
                         "cudaMemcpyAsync to device");
  }
  absl::Status CopyToHost(void* dst, const void* src, size_t bytes, Stream* stream) override {
    if (auto s = Enter(); !s.ok()) return s;
    return sticky_.Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, Native(stream)),
                         "cudaMemcpyAsync to host");
  }
  // A stream is waited for by polling it (cudaStreamQuery, yielding the CPU between polls):
  // a SYNC reply then leaves within a poll (~1-2 us) of the work's end, whatever the context's
  // scheduling flags (cudaDeviceScheduleBlockingSync would wake the thread by interrupt, tens
  // of us later).
  absl::Status Synchronize(Stream* stream) override {
    if (auto s = Enter(); !s.ok()) return s;
    if (stream == nullptr) return sticky_.Check(cudaDeviceSynchronize(), "synchronize");
    const cudaStream_t st = Native(stream);
    // Long work (a big prefill) is waited for by cudaStreamSynchronize after kPollFor, so a
    // waiting thread does not keep a core busy for long.
    constexpr auto kPollFor = std::chrono::milliseconds(20);
    const auto poll_until = std::chrono::steady_clock::now() + kPollFor;
    cudaError_t e;
    for (uint32_t polls = 1; (e = cudaStreamQuery(st)) == cudaErrorNotReady; ++polls) {
      if (polls % 64 == 0 && std::chrono::steady_clock::now() > poll_until) {
        e = cudaStreamSynchronize(st);
        break;
      }
      std::this_thread::yield();
    }
    return sticky_.Check(e, "synchronize");
  }

  absl::StatusOr<std::unique_ptr<PreparedPlan>> Prepare(PlanSpec spec, Stream* stream) override {
    if (auto s = Enter(); !s.ok()) return s;
    // The plan's q dtype (CreatePlanRequest.q_dtype), when given: fp16 or bf16, and for prefill
    // and cascade plans the pool's own (the prefill kernels read K/V of q's type only).
    if (spec.q_dtype.has_value()) {
      if (*spec.q_dtype != DType::kFloat16 && *spec.q_dtype != DType::kBFloat16) {
        return absl::UnimplementedError(
            absl::StrCat("q_dtype=", DTypeName(*spec.q_dtype),
                         ": the CUDA kernels take float16 and bfloat16 q"));
      }
      const bool prefill_kernels =
          spec.kind != AttentionKind::kDecode || !spec.cascade_levels.empty();
      if (prefill_kernels && *spec.q_dtype != spec.kv_dtype && !IsFp8(spec.kv_dtype)) {
        return absl::UnimplementedError(absl::StrCat(
            "q_dtype=", DTypeName(*spec.q_dtype), " on a ", DTypeName(spec.kv_dtype),
            " pool: the CUDA prefill/append kernels read K/V of q's dtype (decode plans take "
            "both)"));
      }
    }
    // FP8 K/V: the decode kernels read it; the prefill kernels (and so cascade levels) read K/V
    // of q's 16-bit type only. Refused here, before anything is allocated.
    if (IsFp8(spec.kv_dtype) &&
        (spec.kind != AttentionKind::kDecode || !spec.cascade_levels.empty())) {
      return absl::UnimplementedError(absl::StrCat(
          spec.kind != AttentionKind::kDecode ? "kind=ATTENTION_KIND_PREFILL"
                                              : "cascade_levels (a cascade plan)",
          " on a ", DTypeName(spec.kv_dtype),
          " pool: the CUDA backend runs fp8 K/V in decode plans without cascade levels (prefill, "
          "append and cascade plans need a float16 or bfloat16 pool)"));
    }
    if (!spec.cascade_levels.empty()) return PrepareCascade(*this, std::move(spec), stream);
    absl::StatusOr<std::vector<int32_t>> kv_len = CheckedKvLengths(spec);
    if (!kv_len.ok()) return kv_len.status();
    auto plan = cuda::CudaPlan::Create(std::move(spec), *kv_len, device_, Native(stream));
    if (!plan.ok()) return sticky_.AfterFailure(plan.status());
    return std::unique_ptr<PreparedPlan>(*std::move(plan));
  }

  // In place (CudaPlan::Update: the device block kept while the table fits, only the changed
  // range uploaded, a new schedule) for an ordinary plan of the same shape on its own stream;
  // anything else is prepared anew (Backend's default).
  absl::Status UpdatePlan(std::unique_ptr<PreparedPlan>& plan, PlanSpec spec,
                          Stream* stream) override {
    if (auto s = Enter(); !s.ok()) return s;
    auto* cp = dynamic_cast<cuda::CudaPlan*>(plan.get());
    if (cp == nullptr || cp->stream_ != Native(stream) || !UpdatableInPlace(cp->spec(), spec)) {
      return Backend::UpdatePlan(plan, std::move(spec), stream);
    }
    absl::StatusOr<std::vector<int32_t>> kv_len = CheckedKvLengths(spec);
    if (!kv_len.ok()) return kv_len.status();
    return Launched(cp->Update(std::move(spec), *kv_len, Native(stream)));
  }

  absl::Status AppendKv(const PreparedPlan& plan, const PagedKV& layer, const void* k,
                        const void* v, DType new_dtype, Stream* stream) override {
    if (auto s = Enter(); !s.ok()) return s;
    // A cascade plan appends to its last level.
    absl::StatusOr<const cuda::CudaPlan*> cp = CheckedPlan(&OwnLevel(plan), layer);
    if (!cp.ok()) return cp.status();
    return Launched(
        cuda::LaunchAppendKv((*cp)->AppendParams(layer, k, v, new_dtype), Native(stream)));
  }

  absl::Status Attention(const RunArgs& args) override {
    if (auto s = Enter(); !s.ok()) return s;
    if (auto s = CheckRunArgs(args); !s.ok()) return s;
    if (const CascadePlan* cascade = AsCascadePlan(args.plan)) {
      return CascadeAttention(*this, *cascade, args);
    }
    absl::StatusOr<const cuda::CudaPlan*> checked = CheckedPlan(args.plan, args.layer);
    if (!checked.ok()) return checked.status();
    const cuda::CudaPlan& cp = **checked;
    const PlanSpec& ps = cp.spec();
    const cudaStream_t st = Native(args.stream);
    const AppendKvParams append = cp.AppendParams(args.layer, args.k_new, args.v_new,
                                                  args.kv_new_dtype.value_or(args.layer.dtype));
    const bool decode = ps.kind == AttentionKind::kDecode;
    const bool upload_offsets =
        args.rope_offsets_host != nullptr && args.options.pos_encoding == PosEncoding::kRopeLlama;
    PagedAttentionParams p;
    p.kv = cp.WithPageTable(args.layer);
    p.qo.q = args.q;
    p.qo.o = args.o;
    p.qo.lse = args.lse;
    p.qo.q_dtype = args.q_dtype;
    p.qo.num_qo_heads = ps.num_qo_heads;
    p.qo.batch_size = ps.batch_size();
    p.qo.qo_indptr = decode ? nullptr : cp.d_qo_indptr;
    p.options = args.options;
    p.options.rope_offsets = upload_offsets ? cp.d_rope_offsets : nullptr;
    p.options.custom_mask = cp.mask;  // the plan's, in its upload
    return AppendThenAttend(
        args.k_new != nullptr, [&] { return cuda::CheckAppendKv(append); },
        [&] {
          return decode ? cuda::CheckPagedDecode(*cp.decode, p)
                        : cuda::CheckPagedPrefill(*cp.prefill, p);
        },
        [&] { return Launched(cuda::LaunchAppendKv(append, st)); },
        [&] {
          if (upload_offsets) {
            if (auto s = UploadRopeOffsets(cp, args.rope_offsets_host, st); !s.ok()) return s;
          }
          return Launched(decode ? cuda::RunPagedDecode(*cp.decode, p, st)
                                 : cuda::RunPagedPrefill(*cp.prefill, p, st));
        });
  }

  absl::Status MergeStates(const MergeStatesParams& params, Stream* stream) override {
    if (auto s = Enter(); !s.ok()) return s;
    return Launched(cuda::LaunchMergeStates(params, Native(stream)));
  }

  // The ragged prefill kernel (RunRaggedPrefill) over the plan's prefill tiling; its kv_indptr
  // (the plan's page indptr, one row per page) and qo_indptr are already on the device.
  absl::Status RaggedAttention(const RaggedRunArgs& args) override {
    if (auto s = Enter(); !s.ok()) return s;
    if (auto s = CheckRaggedRunArgs(args); !s.ok()) return s;
    const auto* cp = dynamic_cast<const cuda::CudaPlan*>(args.plan);
    if (cp == nullptr || cp->prefill == nullptr) {
      return absl::InvalidArgumentError("RaggedRunArgs.plan is not a CUDA prefill plan");
    }
    const cudaStream_t st = Native(args.stream);
    const bool upload_offsets =
        args.rope_offsets_host != nullptr && args.options.pos_encoding == PosEncoding::kRopeLlama;
    RaggedAttentionParams p = RaggedParamsOf(args, cp->d_qo_indptr, cp->d_indptr);
    p.options.rope_offsets = upload_offsets ? cp->d_rope_offsets : nullptr;
    p.options.custom_mask = {};  // ragged plans have none
    if (auto s = cuda::CheckRaggedPrefill(*cp->prefill, p); !s.ok()) return s;
    if (upload_offsets) {
      if (auto s = UploadRopeOffsets(*cp, args.rope_offsets_host, st); !s.ok()) return s;
    }
    return Launched(cuda::RunRaggedPrefill(*cp->prefill, p, st));
  }

  // Launches a kernel that traps and waits for it: the context then carries a sticky error
  // (cudaErrorLaunchFailure or cudaErrorIllegalInstruction), which StickyError records, so
  // Health() and every later call report it. OK when the fault was injected and recorded.
  absl::Status InjectDeviceFaultForTesting() override {
    if (auto s = Enter(); !s.ok()) return s;
    cudaError_t e = cuda::internal::LaunchTrapKernel(nullptr);
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    const absl::Status fault = sticky_.Check(e, "injected device fault (trap kernel)");
    if (sticky_.Get().ok()) {
      return absl::InternalError(
          absl::StrCat("InjectDeviceFaultForTesting: the trap kernel left no sticky error (",
                       fault.ToString(), ")"));
    }
    return absl::OkStatus();
  }

  absl::Status Health() const override {
    sticky_.Probe(device_);
    return sticky_.Get();
  }

 private:
  explicit CudaBackend(int device) : device_(device) {}

  // A run's per-request RoPE offsets into its plan (runs of one plan are stream-ordered). The
  // source is pageable: the copy is staged before cudaMemcpyAsync returns.
  absl::Status UploadRopeOffsets(const cuda::CudaPlan& cp, const int32_t* host, cudaStream_t st) {
    return sticky_.Check(
        cudaMemcpyAsync(cp.d_rope_offsets, host, cp.spec().batch_size() * sizeof(int32_t),
                        cudaMemcpyHostToDevice, st),
        "rope_offsets upload");
  }

  // A plan's checks before any device memory is taken (CheckPlanSpec, a batch, the schedule's
  // preconditions, which PrepareDecode and PreparePrefill check again); its kv lengths.
  static absl::StatusOr<std::vector<int32_t>> CheckedKvLengths(const PlanSpec& spec) {
    // Head dims: the decode and prefill plans check what is compiled.
    if (auto s = CheckPlanSpec(spec, std::numeric_limits<int32_t>::max()); !s.ok()) return s;
    if (spec.batch_size() <= 0) return absl::InvalidArgumentError("plan: empty batch");
    std::vector<int32_t> kv_len = cuda::internal::KvLengths(spec);
    if (auto s = spec.kind == AttentionKind::kDecode
                     ? cuda::checks::DecodePlan(kv_len, spec.num_qo_heads, spec.num_kv_heads,
                                                spec.head_dim, spec.page_size,
                                                /*tensor_cores_forced=*/false)
                     : cuda::checks::PrefillPlan(spec.qo_indptr, kv_len, spec.num_qo_heads,
                                                 spec.num_kv_heads, spec.head_dim);
        !s.ok()) {
      return s;
    }
    return kv_len;
  }

  // The plan as a CUDA plan, checked against the layer it is used with.
  static absl::StatusOr<const cuda::CudaPlan*> CheckedPlan(const PreparedPlan* plan,
                                                           const PagedKV& layer) {
    const auto* cp = dynamic_cast<const cuda::CudaPlan*>(plan);
    if (cp == nullptr) return absl::InvalidArgumentError("plan is not a CUDA plan");
    if (auto s = CheckLayerMatchesPlan(cp->spec(), cp->max_page_id, layer); !s.ok()) return s;
    return cp;
  }

  // A launcher's status; a failure that left a sticky error is recorded.
  absl::Status Launched(absl::Status s) { return s.ok() ? s : sticky_.AfterFailure(std::move(s)); }

  // Every entry point: fail fast after a sticky error; make this thread use our device.
  absl::Status Enter() {
    if (absl::Status s = sticky_.Get(); !s.ok()) return s;
    return sticky_.Check(cudaSetDevice(device_), "cudaSetDevice");
  }

  absl::Status FillInfo() {
    cudaDeviceProp prop{};
    ATTND_RETURN_IF_CUDA_ERROR(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
    size_t free_b = 0, total_b = 0;
    ATTND_RETURN_IF_CUDA_ERROR(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    info_.name = "cuda";
    info_.device = absl::StrCat(prop.name, " (sm_", prop.major, prop.minor, ", ",
                                prop.multiProcessorCount, " SMs)");
    info_.device_ordinal = device_;
    info_.memory_total_bytes = total_b;
    // fp8 K/V: decode plans only (Prepare refuses the others).
    info_.kv_dtypes = {DType::kFloat16, DType::kBFloat16, DType::kFloat8E4M3, DType::kFloat8E5M2};
    info_.q_dtypes = {DType::kFloat16, DType::kBFloat16};
#ifdef ATTND_CUDA_HD64
    info_.head_dims.push_back(64);
#endif
#ifdef ATTND_CUDA_HD128
    info_.head_dims.push_back(128);
#endif
#ifdef ATTND_CUDA_HD256
    info_.head_dims.push_back(256);
#endif
    info_.page_sizes = {};
    info_.cuda_ipc = true;
    info_.tensor_alignment_bytes = cuda::checks::kVectorBytes;
    auto sm90 = cuda::CurrentDeviceIsSm90();
    if (!sm90.ok()) return sm90.status();
    info_.kernel_paths =
        cuda::internal::DescribeKernelPaths(info_.head_dims, *sm90, &cuda::checks::TcDecodeBuilt);
    return absl::OkStatus();
  }

  // Size of the allocation containing p from p on, through the driver's cuMemGetAddressRange
  // (fetched through the runtime, so no link against libcuda).
  absl::Status AllocationSize(void* p, size_t* bytes) {
    using GetRange = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);
    static GetRange fn = [] {
      void* f = nullptr;
      cudaDriverEntryPointQueryResult q;
      if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &f, 12000, cudaEnableDefault,
                                           &q) != cudaSuccess ||
          q != cudaDriverEntryPointSuccess) {
        cudaGetLastError();
        f = nullptr;
      }
      return reinterpret_cast<GetRange>(f);
    }();
    if (fn == nullptr) return absl::InternalError("cuMemGetAddressRange is not available");
    CUdeviceptr base = 0;
    size_t size = 0;
    const CUresult r = fn(&base, &size, reinterpret_cast<CUdeviceptr>(p));
    if (r != CUDA_SUCCESS) {
      return absl::InternalError(absl::StrCat("cuMemGetAddressRange failed (", r, ")"));
    }
    *bytes = size - (reinterpret_cast<CUdeviceptr>(p) - base);
    return absl::OkStatus();
  }

  int device_;
  BackendInfo info_;
  mutable StickyError sticky_;
  // IPC mappings by handle bytes (see IpcMapping); expired entries are dropped on the next open.
  std::mutex ipc_mutex_;
  std::map<std::string, std::weak_ptr<IpcMapping>> ipc_mappings_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options) {
  return CudaBackend::Create(options);
}

}  // namespace attnd::kernels
