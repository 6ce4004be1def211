// Async completion commands: RegisterEvent and UnregisterEvent (the engine's interprocess events)
// and GetCompletionEvent (the session's own).
#include <utility>

#include "server/core/core_state.h"
#include "spdlog/spdlog.h"

namespace attnd::server {
namespace {

// Events per session (engine events opened by RegisterEvent).
constexpr size_t kMaxEventsPerSession = 1 << 10;
constexpr size_t kCudaIpcEventHandleBytes = 64;  // sizeof(cudaIpcEventHandle_t)

}  // namespace

absl::StatusOr<v1::RegisterEventResponse> Core::RegisterEvent(
    SessionRef session_ref, const v1::RegisterEventRequest& request) {
  State& st = *state_;
  return st.WithSession(
      session_ref, [&](Session& session) -> absl::StatusOr<v1::RegisterEventResponse> {
        if (request.ipc_event_handle().size() != kCudaIpcEventHandleBytes) {
          return absl::InvalidArgumentError(absl::StrCat(
              "ipc_event_handle has ", request.ipc_event_handle().size(), " bytes, expected ",
              kCudaIpcEventHandleBytes, " (cudaIpcEventHandle_t)"));
        }
        if (request.device() < 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("device=", request.device(), " must be >= 0"));
        }
        if (session.events.size() >= kMaxEventsPerSession) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "this session has ", session.events.size(), " events registered, the limit"));
        }
        auto event = st.backend->OpenIpcEvent(request.ipc_event_handle(), request.device());
        if (!event.ok()) {
          return absl::Status(event.status().code(),
                              absl::StrCat("ipc_event_handle: ", event.status().message()));
        }
        std::string id = InsertWithNewId(session.events, "e-", *std::move(event));
        spdlog::info("session {} registered event {} (device {})", session.tag, id,
                     request.device());
        v1::RegisterEventResponse response;
        response.set_event_id(std::move(id));
        return response;
      });
}

absl::StatusOr<v1::UnregisterEventResponse> Core::UnregisterEvent(
    SessionRef session_ref, const v1::UnregisterEventRequest& request) {
  State& st = *state_;
  return st.WithSession(
      session_ref, [&](Session& session) -> absl::StatusOr<v1::UnregisterEventResponse> {
        // Waits already enqueued on the event stay valid (CUDA defers the destruction).
        if (auto s = EraseOwned(session.events, request.event_id(), "event_id", kNoSuchEvent);
            !s.ok()) {
          return s;
        }
        return v1::UnregisterEventResponse();
      });
}

absl::StatusOr<v1::GetCompletionEventResponse> Core::GetCompletionEvent(
    SessionRef session_ref, const v1::GetCompletionEventRequest& request) {
  (void)request;
  State& st = *state_;
  return st.WithSession(session_ref,
                        [&](Session& session) -> absl::StatusOr<v1::GetCompletionEventResponse> {
                          auto event = st.CompletionEvent(session);
                          if (!event.ok()) return event.status();
                          std::string handle = (*event)->ipc_handle();
                          if (handle.empty())
                            return absl::InternalError("the completion event has no IPC handle");
                          v1::GetCompletionEventResponse response;
                          response.set_ipc_event_handle(std::move(handle));
                          response.set_device(st.backend->info().device_ordinal);
                          return response;
                        });
}

}  // namespace attnd::server
