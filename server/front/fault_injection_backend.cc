#include "server/front/fault_injection_backend.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace attnd::server::front {
namespace {

namespace k = ::attnd::kernels;

class FaultInjectionBackend final : public k::Backend {
 public:
  FaultInjectionBackend(std::unique_ptr<k::Backend> real, int64_t after_runs)
      : real_(std::move(real)), after_runs_(after_runs) {}

  const k::BackendInfo& info() const override { return real_->info(); }
  bool host_accessible() const override { return real_->host_accessible(); }

  absl::StatusOr<std::unique_ptr<k::BackendMemory>> Allocate(size_t bytes) override {
    return Forward([&] { return real_->Allocate(bytes); });
  }
  absl::StatusOr<std::unique_ptr<k::BackendMemory>> OpenIpcBuffer(const std::string& handle,
                                                                  int32_t device,
                                                                  size_t size_bytes) override {
    return Forward([&] { return real_->OpenIpcBuffer(handle, device, size_bytes); });
  }
  absl::StatusOr<std::unique_ptr<k::Stream>> CreateStream() override {
    return Forward([&] { return real_->CreateStream(); });
  }
  absl::Status CopyToBackend(void* dst, const void* src, size_t bytes, k::Stream* stream) override {
    return Forward([&] { return real_->CopyToBackend(dst, src, bytes, stream); });
  }
  absl::Status CopyToHost(void* dst, const void* src, size_t bytes, k::Stream* stream) override {
    return Forward([&] { return real_->CopyToHost(dst, src, bytes, stream); });
  }
  absl::Status Synchronize(k::Stream* stream) override {
    return Forward([&] { return real_->Synchronize(stream); });
  }
  absl::Status Zero(void* dst, size_t bytes, k::Stream* stream) override {
    return Forward([&] { return real_->Zero(dst, bytes, stream); });
  }
  absl::Status ZeroRows(void* dst, size_t bytes, size_t stride, int32_t rows,
                        k::Stream* stream) override {
    return Forward([&] { return real_->ZeroRows(dst, bytes, stride, rows, stream); });
  }
  absl::StatusOr<std::unique_ptr<k::PreparedPlan>> Prepare(k::PlanSpec spec,
                                                           k::Stream* stream) override {
    return Forward([&] { return real_->Prepare(std::move(spec), stream); });
  }
  absl::Status AppendKv(const k::PreparedPlan& plan, const k::PagedKV& layer, const void* k,
                        const void* v, k::DType new_dtype, k::Stream* stream) override {
    return Forward([&] { return real_->AppendKv(plan, layer, k, v, new_dtype, stream); });
  }
  absl::Status Attention(const k::RunArgs& args) override {
    if (successful_runs_.load(std::memory_order_acquire) >= after_runs_) InjectOnce();
    return Forward([&] {
      absl::Status status = real_->Attention(args);
      if (status.ok()) successful_runs_.fetch_add(1, std::memory_order_acq_rel);
      return status;
    });
  }
  absl::Status MergeStates(const k::MergeStatesParams& params, k::Stream* stream) override {
    return Forward([&] { return real_->MergeStates(params, stream); });
  }
  absl::Status RaggedAttention(const k::RaggedRunArgs& args) override {
    return Forward([&] { return real_->RaggedAttention(args); });
  }
  absl::StatusOr<std::unique_ptr<k::Event>> CreateIpcEvent() override {
    return Forward([&] { return real_->CreateIpcEvent(); });
  }
  absl::StatusOr<std::unique_ptr<k::Event>> OpenIpcEvent(const std::string& handle,
                                                         int32_t device) override {
    return Forward([&] { return real_->OpenIpcEvent(handle, device); });
  }
  absl::Status RecordEvent(k::Event& event, k::Stream* stream) override {
    return Forward([&] { return real_->RecordEvent(event, stream); });
  }
  absl::Status StreamWaitEvent(k::Stream* stream, k::Event& event) override {
    return Forward([&] { return real_->StreamWaitEvent(stream, event); });
  }
  absl::Status Health() const override {
    return Forward([&] { return real_->Health(); });
  }
  absl::Status InjectDeviceFaultForTesting() override {
    return real_->InjectDeviceFaultForTesting();
  }

 private:
  // The emulated sticky error, or OK while the decorator is not broken.
  absl::Status Broken() const {
    if (!broken_.load(std::memory_order_acquire)) return absl::OkStatus();
    return emulated_error_;  // written before broken_ is set, never after
  }

  template <typename Call>
  auto Forward(Call&& call) const -> decltype(call()) {
    if (absl::Status broken = Broken(); !broken.ok()) return broken;
    return call();
  }

  void InjectOnce() {
    std::call_once(inject_once_, [this] {
      const absl::Status injected = real_->InjectDeviceFaultForTesting();
      if (injected.ok()) {
        spdlog::warn(
            "test hook: the {} backend was put into a sticky device error after {} "
            "successful runs (--testonly_device_fault_after_runs)",
            real_->info().name, after_runs_);
        return;
      }
      emulated_error_ = absl::InternalError(absl::StrCat(
          "sticky device error injected by --testonly_device_fault_after_runs=", after_runs_,
          " (emulated: the ", real_->info().name,
          " backend cannot inject one: ", injected.ToString(), ")"));
      broken_.store(true, std::memory_order_release);
      spdlog::warn("test hook: {}", emulated_error_.ToString());
    });
  }

  const std::unique_ptr<k::Backend> real_;
  const int64_t after_runs_;
  std::atomic<int64_t> successful_runs_{0};
  std::once_flag inject_once_;
  absl::Status emulated_error_;
  std::atomic<bool> broken_{false};
};

}  // namespace

std::unique_ptr<kernels::Backend> InjectDeviceFaultAfterRuns(
    std::unique_ptr<kernels::Backend> backend, int64_t successful_runs) {
  return std::make_unique<FaultInjectionBackend>(std::move(backend), successful_runs);
}

}  // namespace attnd::server::front
