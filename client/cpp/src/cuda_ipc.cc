#include "attnd/client/cuda_ipc.h"

#include <cuda_runtime.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace attnd::client::cuda {
namespace {

absl::Status CudaError(cudaError_t e, const char* what) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorName(e), " (",
                                          cudaGetErrorString(e), ")"));
}

absl::StatusOr<int32_t> ResolveDevice(int32_t device) {
  if (device >= 0) return device;
  int current = 0;
  if (cudaError_t e = cudaGetDevice(&current); e != cudaSuccess) {
    return CudaError(e, "cudaGetDevice");
  }
  return current;
}

}  // namespace

absl::StatusOr<std::string> RegisterDeviceBuffer(SessionApi& session, const void* device_ptr,
                                                 uint64_t size_bytes, int32_t device) {
  auto ordinal = ResolveDevice(device);
  if (!ordinal.ok()) return ordinal.status();
  cudaIpcMemHandle_t handle;
  if (cudaError_t e = cudaIpcGetMemHandle(&handle, const_cast<void*>(device_ptr));
      e != cudaSuccess) {
    return CudaError(e, "cudaIpcGetMemHandle");
  }
  return session.RegisterCudaIpc(
      std::string(reinterpret_cast<const char*>(&handle), sizeof(handle)), *ordinal, size_bytes);
}

absl::StatusOr<std::unique_ptr<EngineEvent>> EngineEvent::Create(SessionApi& session,
                                                                 int32_t device) {
  auto ordinal = ResolveDevice(device);
  if (!ordinal.ok()) return ordinal.status();
  cudaEvent_t event = nullptr;
  if (cudaError_t e =
          cudaEventCreateWithFlags(&event, cudaEventInterprocess | cudaEventDisableTiming);
      e != cudaSuccess) {
    return CudaError(e, "cudaEventCreateWithFlags(interprocess)");
  }
  cudaIpcEventHandle_t handle;
  if (cudaError_t e = cudaIpcGetEventHandle(&handle, event); e != cudaSuccess) {
    cudaEventDestroy(event);
    return CudaError(e, "cudaIpcGetEventHandle");
  }
  v1::RegisterEventRequest request;
  request.set_ipc_event_handle(std::string(reinterpret_cast<const char*>(&handle), sizeof(handle)));
  request.set_device(*ordinal);
  auto response = session.RegisterEvent(request);
  if (!response.ok()) {
    cudaEventDestroy(event);
    return response.status();
  }
  return std::unique_ptr<EngineEvent>(new EngineEvent(event, response->event_id()));
}

EngineEvent::~EngineEvent() { cudaEventDestroy(event_); }

absl::Status EngineEvent::Record(cudaStream_t stream) {
  if (cudaError_t e = cudaEventRecord(event_, stream); e != cudaSuccess) {
    return CudaError(e, "cudaEventRecord");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CompletionEvent>> CompletionEvent::Open(SessionApi& session) {
  auto response = session.GetCompletionEvent(v1::GetCompletionEventRequest());
  if (!response.ok()) return response.status();
  if (response->ipc_event_handle().size() != sizeof(cudaIpcEventHandle_t)) {
    return absl::InternalError(absl::StrCat("completion event handle has ",
                                            response->ipc_event_handle().size(), " bytes"));
  }
  cudaIpcEventHandle_t handle;
  std::memcpy(&handle, response->ipc_event_handle().data(), sizeof(handle));
  cudaEvent_t event = nullptr;
  if (cudaError_t e = cudaIpcOpenEventHandle(&event, handle); e != cudaSuccess) {
    return CudaError(e, "cudaIpcOpenEventHandle");
  }
  return std::unique_ptr<CompletionEvent>(new CompletionEvent(event));
}

CompletionEvent::~CompletionEvent() { cudaEventDestroy(event_); }

absl::Status CompletionEvent::WaitOn(cudaStream_t stream) {
  if (cudaError_t e = cudaStreamWaitEvent(stream, event_, 0); e != cudaSuccess) {
    return CudaError(e, "cudaStreamWaitEvent");
  }
  return absl::OkStatus();
}

absl::Status CompletionEvent::Synchronize() {
  if (cudaError_t e = cudaEventSynchronize(event_); e != cudaSuccess) {
    return CudaError(e, "cudaEventSynchronize");
  }
  return absl::OkStatus();
}

}  // namespace attnd::client::cuda
