// CUDA side of the same-host zero-copy path (library attnd_client_cuda, built only with CUDA):
// registering cudaMalloc'ed buffers by IPC handle, the engine's interprocess event that attnd
// waits on before reading inputs, and the session's completion event the engine waits on after
// ASYNC commands. The core library (attnd_client) does not need CUDA.
//
// A decode step with async completion, one layer at a time:
//   auto ready = EngineEvent::Create(session);          // once
//   auto done = CompletionEvent::Open(session);         // once
//   ... write q (and k/v) on `stream` ...
//   ready->Record(stream);                              // attnd's stream waits on it
//   run.set_wait_event_id(ready->id()); run.set_completion(v1::COMPLETION_ASYNC);
//   session.Run(run);                                   // returns once enqueued
//   done->WaitOn(stream);                               // later work on `stream` sees o
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnd/client/session_api.h"

namespace attnd::client::cuda {

// Registers the device allocation that starts at `device_ptr` (from cudaMalloc: IPC handles
// cover whole allocations) with the session; returns the buffer id for BufferSlice. `device` is
// the ordinal in the daemon's numbering (-1: the current device).
absl::StatusOr<std::string> RegisterDeviceBuffer(SessionApi& session, const void* device_ptr,
                                                 uint64_t size_bytes, int32_t device = -1);

// The engine's interprocess event (cudaEventInterprocess | cudaEventDisableTiming), registered
// with the session. Record it after writing a command's inputs and name id() in wait_event_id.
class EngineEvent {
 public:
  static absl::StatusOr<std::unique_ptr<EngineEvent>> Create(SessionApi& session,
                                                             int32_t device = -1);
  ~EngineEvent();  // destroys the event (the daemon drops its copy with the session)
  EngineEvent(const EngineEvent&) = delete;
  EngineEvent& operator=(const EngineEvent&) = delete;

  const std::string& id() const { return id_; }
  cudaEvent_t native() const { return event_; }
  absl::Status Record(cudaStream_t stream);

 private:
  EngineEvent(cudaEvent_t event, std::string id) : event_(event), id_(std::move(id)) {}
  cudaEvent_t event_;
  std::string id_;
};

// The session's completion event, opened in this process (cudaIpcOpenEventHandle).
class CompletionEvent {
 public:
  static absl::StatusOr<std::unique_ptr<CompletionEvent>> Open(SessionApi& session);
  ~CompletionEvent();
  CompletionEvent(const CompletionEvent&) = delete;
  CompletionEvent& operator=(const CompletionEvent&) = delete;

  // Later work on `stream` waits for the daemon's work up to the last ASYNC reply received.
  absl::Status WaitOn(cudaStream_t stream);
  // Blocks the calling thread until that work finished.
  absl::Status Synchronize();
  cudaEvent_t native() const { return event_; }

 private:
  explicit CompletionEvent(cudaEvent_t event) : event_(event) {}
  cudaEvent_t event_;
};

}  // namespace attnd::client::cuda
