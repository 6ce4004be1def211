// Buffer commands: RegisterBuffer (shared memory by peer-socket token, or CUDA IPC) and
// UnregisterBuffer.
#include <utility>

#include "server/core/buffer.h"
#include "server/core/core_state.h"
#include "spdlog/spdlog.h"

namespace attnd::server {

absl::StatusOr<v1::RegisterBufferResponse> Core::RegisterBuffer(
    SessionRef session_ref, const v1::RegisterBufferRequest& request) {
  State& st = *state_;
  return st.WithSession(
      session_ref, [&](Session& session) -> absl::StatusOr<v1::RegisterBufferResponse> {
        if (auto s = ValidateRegisterBuffer(request); !s.ok()) return s;
        if (static_cast<int64_t>(session.buffers.size()) >= st.options.max_buffers_per_session) {
          return QuotaError(
              absl::StrCat("this session has ", session.buffers.size(), " buffers registered"),
              st.options.max_buffers_per_session, "max_buffers_per_session",
              "unregister buffers it no longer uses");
        }
        absl::StatusOr<std::unique_ptr<RegisteredBuffer>> buffer;
        if (request.has_shared_memory_fd()) {
          if (!st.backend->host_accessible()) {
            return absl::FailedPreconditionError(
                absl::StrCat("shared_memory_fd buffers need a backend that reads host memory; the ",
                             st.backend->info().name, " backend takes cuda_ipc buffers"));
          }
          auto fd = st.peers.TakeFd(session.owner, request.shared_memory_fd().fd_token());
          if (!fd.ok()) return fd.status();
          buffer = OpenSharedMemoryFdBuffer(*std::move(fd), request.size_bytes());
        } else {
          buffer = OpenCudaIpcBuffer(*st.backend, request.cuda_ipc().ipc_handle(),
                                     request.cuda_ipc().device(), request.size_bytes());
        }
        if (!buffer.ok()) return buffer.status();
        const RegisteredBuffer& registered = **buffer;
        std::string id = InsertWithNewId(session.buffers, "b-",
                                         std::shared_ptr<RegisteredBuffer>(*std::move(buffer)));
        spdlog::info("session {} registered buffer {}: {}, {} bytes", session.tag, id,
                     registered.description(), registered.size());
        st.buffers.fetch_add(1);
        v1::RegisterBufferResponse response;
        response.set_buffer_id(std::move(id));
        return response;
      });
}

absl::StatusOr<v1::UnregisterBufferResponse> Core::UnregisterBuffer(
    SessionRef session_ref, const v1::UnregisterBufferRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref,
                        [&](Session& session) -> absl::StatusOr<v1::UnregisterBufferResponse> {
                          if (auto s = EraseOwned(session.buffers, request.buffer_id(), "buffer_id",
                                                  " is not a buffer of this session");
                              !s.ok()) {
                            return s;
                          }
                          st.buffers.fetch_sub(1);
                          return v1::UnregisterBufferResponse();
                        });
}

}  // namespace attnd::server
