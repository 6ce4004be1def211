// The CPU Backend: host memory, inline "streams", and the reference kernels of cpu_reference.h.
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "attnd/kernels/backend.h"
#include "attnd/kernels/backend_checks.h"
#include "attnd/kernels/cascade.h"
#include "attnd/kernels/cpu_reference.h"
#include "parallel_for.h"
#include "validation.h"

namespace attnd::kernels {
namespace {

uint64_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
}

// Zero-filled, page-aligned anonymous memory (mmap); unmapped when destroyed. Anonymous pages are
// zero until written and only take physical memory once touched, so a large pool costs nothing up
// front.
class HostMemory final : public BackendMemory {
 public:
  static absl::StatusOr<std::unique_ptr<BackendMemory>> Create(size_t bytes) {
    const uint64_t physical = PhysicalMemoryBytes();
    if (physical != 0 && bytes > physical) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate ", bytes, " bytes: the host has ", physical));
    }
    const size_t mapped = bytes == 0 ? 1 : bytes;  // mmap rejects length 0
    void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes,
                                                       " bytes of host "
                                                       "memory: ",
                                                       std::strerror(errno)));
    }
    return std::unique_ptr<BackendMemory>(new HostMemory(p, bytes, mapped));
  }
  ~HostMemory() override { munmap(data_, mapped_); }
  void* data() const override { return data_; }
  size_t size() const override { return size_; }

 private:
  HostMemory(void* data, size_t size, size_t mapped) : data_(data), size_(size), mapped_(mapped) {}
  void* data_;
  size_t size_;
  size_t mapped_;
};

// Work on the CPU backend runs inline on the caller's thread, so a stream is only a token.
class InlineStream final : public Stream {
 public:
  void* native() const override { return nullptr; }
};

// The CPU plan is the validated page table itself; kernels read it from the spec's vectors.
class CpuPlan final : public PreparedPlan {
 public:
  explicit CpuPlan(PlanSpec spec)
      : PreparedPlan(std::move(spec)), max_page_id(MaxPageId(this->spec())) {}
  // UpdatePlan in place: work runs inline, so no run can still be reading the old table.
  void Update(PlanSpec spec) {
    max_page_id = MaxPageId(spec);
    ReplaceSpec(std::move(spec));
  }
  int32_t max_page_id;
};

// The layer view with the plan's page table filled in; checks that geometry and plan agree.
absl::StatusOr<PagedKV> LayerWithPageTable(const PreparedPlan& plan, const PagedKV& layer) {
  const auto* cp = dynamic_cast<const CpuPlan*>(&plan);
  if (cp == nullptr) return absl::InvalidArgumentError("plan is not a CPU plan");
  const PlanSpec& spec = plan.spec();
  if (auto s = CheckLayerMatchesPlan(spec, cp->max_page_id, layer); !s.ok()) return s;
  PagedKV kv = layer;
  kv.batch_size = spec.batch_size();
  kv.indptr = spec.kv_indptr.data();
  kv.indices = spec.kv_indices.data();
  kv.last_page_len = spec.kv_last_page_len.data();
  return kv;
}

// New K/V rows of the plan's query tokens (qo_indptr) into the layer.
AppendKvParams AppendParams(const PreparedPlan& plan, const PagedKV& kv, const void* k,
                            const void* v, DType new_dtype) {
  AppendKvParams params;
  params.kv = kv;
  params.k = k;
  params.v = v;
  params.new_dtype = new_dtype;
  params.new_indptr = plan.spec().qo_indptr.data();
  return params;
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& options)
      : num_threads_(cpu::ResolveThreadCount(options.num_threads)) {
    info_.name = "cpu";
    info_.device = absl::StrCat("cpu (", num_threads_, " threads)");
    info_.device_ordinal = -1;
    info_.memory_total_bytes = PhysicalMemoryBytes();
    info_.kv_dtypes = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat8E4M3,
                       DType::kFloat8E5M2};
    info_.q_dtypes = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
    // Any head_dim up to cpu::kMaxHeadDim (even with RoPE) works; these are the advertised ones.
    info_.head_dims = {16, 32, 64, 96, 128, 256, 512};
    info_.page_sizes = {};  // any
    info_.cuda_ipc = false;
    info_.kernel_paths = {"every shape: the CPU reference (kernels/cpu, fp32 accumulation)"};
  }

  const BackendInfo& info() const override { return info_; }
  bool host_accessible() const override { return true; }

  absl::StatusOr<std::unique_ptr<BackendMemory>> Allocate(size_t bytes) override {
    return HostMemory::Create(bytes);
  }

  absl::StatusOr<std::unique_ptr<BackendMemory>> OpenIpcBuffer(const std::string&, int32_t,
                                                               size_t) override {
    return absl::FailedPreconditionError("backend cpu cannot open CUDA IPC handles");
  }

  absl::StatusOr<std::unique_ptr<Stream>> CreateStream() override {
    return std::unique_ptr<Stream>(new InlineStream());
  }

  absl::Status CopyToBackend(void* dst, const void* src, size_t bytes, Stream*) override {
    return Copy(dst, src, bytes);
  }
  absl::Status CopyToHost(void* dst, const void* src, size_t bytes, Stream*) override {
    return Copy(dst, src, bytes);
  }
  absl::Status Synchronize(Stream*) override { return absl::OkStatus(); }

  absl::StatusOr<std::unique_ptr<PreparedPlan>> Prepare(PlanSpec spec, Stream* stream) override {
    if (!spec.cascade_levels.empty()) return PrepareCascade(*this, std::move(spec), stream);
    if (auto s = CheckPlanSpec(spec, cpu::kMaxHeadDim); !s.ok()) return s;
    return std::unique_ptr<PreparedPlan>(new CpuPlan(std::move(spec)));
  }

  // In place when the table stays an ordinary one of the same shape (UpdatableInPlace): the new
  // spec replaces the old (no copy of the table); otherwise a new plan (Backend's default).
  absl::Status UpdatePlan(std::unique_ptr<PreparedPlan>& plan, PlanSpec spec,
                          Stream* stream) override {
    auto* cp = dynamic_cast<CpuPlan*>(plan.get());
    if (cp == nullptr || !UpdatableInPlace(cp->spec(), spec)) {
      return Backend::UpdatePlan(plan, std::move(spec), stream);
    }
    if (auto s = CheckPlanSpec(spec, cpu::kMaxHeadDim); !s.ok()) return s;
    cp->Update(std::move(spec));
    return absl::OkStatus();
  }

  absl::Status AppendKv(const PreparedPlan& plan, const PagedKV& layer, const void* k,
                        const void* v, DType new_dtype, Stream*) override {
    const PreparedPlan& own = OwnLevel(plan);  // a cascade plan appends to its last level
    absl::StatusOr<PagedKV> kv = LayerWithPageTable(own, layer);
    if (!kv.ok()) return kv.status();
    return cpu::AppendKv(AppendParams(own, *kv, k, v, new_dtype));
  }

  absl::Status Attention(const RunArgs& args) override {
    if (auto s = CheckRunArgs(args); !s.ok()) return s;
    if (const CascadePlan* cascade = AsCascadePlan(args.plan)) {
      return CascadeAttention(*this, *cascade, args);
    }
    const PlanSpec& spec = args.plan->spec();
    absl::StatusOr<PagedKV> kv = LayerWithPageTable(*args.plan, args.layer);
    if (!kv.ok()) return kv.status();
    const AppendKvParams append = AppendParams(*args.plan, *kv, args.k_new, args.v_new,
                                               args.kv_new_dtype.value_or(args.layer.dtype));
    PagedAttentionParams params;
    params.kv = *kv;
    params.qo.q = args.q;
    params.qo.o = args.o;
    params.qo.lse = args.lse;
    params.qo.q_dtype = args.q_dtype;
    params.qo.num_qo_heads = spec.num_qo_heads;
    params.qo.batch_size = spec.batch_size();
    params.qo.qo_indptr = spec.qo_indptr.data();  // decode plans have 0, 1, ..., B here
    params.options = args.options;
    params.options.rope_offsets = args.rope_offsets_host;
    params.options.custom_mask = spec.custom_mask.View();  // the plan's, in host memory
    return AppendThenAttend(
        args.k_new != nullptr, [&] { return cpu::ValidateAppendKv(append); },
        [&] { return cpu::ValidatePagedAttention(params); }, [&] { return cpu::AppendKv(append); },
        [&] { return cpu::PagedAttention(params, num_threads_); });
  }

  absl::Status MergeStates(const MergeStatesParams& params, Stream*) override {
    return cpu::MergeStates(params, num_threads_);
  }

  absl::Status RaggedAttention(const RaggedRunArgs& args) override {
    if (auto s = CheckRaggedRunArgs(args); !s.ok()) return s;
    const PlanSpec& spec = args.plan->spec();
    RaggedAttentionParams params =
        RaggedParamsOf(args, spec.qo_indptr.data(), spec.kv_indptr.data());
    params.options.rope_offsets = args.rope_offsets_host;
    params.options.custom_mask = spec.custom_mask.View();  // none: ragged plans have no mask
    return cpu::RaggedAttention(params, num_threads_);
  }

 private:
  static absl::Status Copy(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return absl::OkStatus();
    if (dst == nullptr || src == nullptr) {
      return absl::InvalidArgumentError("copy with a null pointer");
    }
    std::memmove(dst, src, bytes);
    return absl::OkStatus();
  }

  int num_threads_;
  BackendInfo info_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const CpuBackendOptions& options) {
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_threads must be >= 0, got ", options.num_threads));
  }
  return std::unique_ptr<Backend>(new CpuBackend(options));
}

}  // namespace attnd::kernels
