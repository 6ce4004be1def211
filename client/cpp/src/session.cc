#include "attnd/client/session.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "attnd/client/status.h"
#include "attnd/v1/attnd.grpc.pb.h"
#include "cancel_watchdog.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/sync_stream.h"

namespace attnd::client {

// The stream and everything it needs; declared here so session.h stays free of stub types.
// Member order matters: the watchdog (which points at the context) is destroyed first.
struct Session::Stream {
  Stream(std::shared_ptr<grpc::Channel> ch, SessionOptions opts)
      : options(std::move(opts)), channel(std::move(ch)), stub(v1::Attnd::NewStub(channel)) {}

  // Marks the stream dead and collects the final status of the call.
  absl::Status Finish(absl::Duration timeout) {
    if (!open) return final_status;
    open = false;
    watchdog.Arm(timeout);
    grpc::Status status = rw->Finish();
    watchdog.Disarm();
    final_status = FromGrpcStatus(status);
    return final_status;
  }

  // The stream broke while a command was in flight: return why.
  absl::Status Broken(const char* what) {
    const bool timed_out = watchdog.fired();
    watchdog.Disarm();
    absl::Status status = Finish(options.close_timeout);
    if (timed_out) {
      final_status = absl::DeadlineExceededError(absl::StrCat(
          "no response to ", what, " within ", absl::FormatDuration(options.command_timeout),
          "; the session stream was cancelled"));
    } else if (status.ok()) {
      final_status = absl::UnavailableError(
          absl::StrCat("the daemon ended the session stream during ", what));
    }
    return final_status;
  }

  SessionOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Attnd::Stub> stub;
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>> rw;
  std::string session_id;
  uint64_t next_request_id = 1;
  bool open = false;
  absl::Status final_status;
  internal::CancelWatchdog watchdog{&context};
};

Session::Session(std::unique_ptr<Stream> stream) : stream_(std::move(stream)) {}

Session::~Session() { (void)Close(); }

absl::StatusOr<std::unique_ptr<Session>> Session::Open(std::shared_ptr<grpc::Channel> channel,
                                                       const SessionOptions& options) {
  auto stream = std::make_unique<Stream>(std::move(channel), options);
  stream->watchdog.Arm(options.command_timeout);
  stream->rw = stream->stub->Session(&stream->context);
  stream->watchdog.Disarm();
  if (stream->rw == nullptr) return absl::UnavailableError("could not start the Session stream");
  stream->open = true;
  std::unique_ptr<Session> session(new Session(std::move(stream)));

  v1::SessionRequest request;
  request.mutable_open()->set_client_name(options.client_name);
  absl::StatusOr<v1::SessionResponse> response = session->Execute(std::move(request));
  if (!response.ok()) return response.status();
  if (response->result_case() != v1::SessionResponse::kOpen) {
    return absl::InternalError(absl::StrCat("attnd answered `open` with result case ",
                                            static_cast<int>(response->result_case())));
  }
  session->stream_->session_id = response->open().session_id();
  return session;
}

const std::string& Session::session_id() const { return stream_->session_id; }

bool Session::is_open() const { return stream_->open; }

absl::StatusOr<v1::SessionResponse> Session::Execute(v1::SessionRequest request) {
  Stream& s = *stream_;
  if (!s.open) {
    return absl::FailedPreconditionError(
        absl::StrCat("the session stream is closed (", s.final_status.ToString(), ")"));
  }
  const uint64_t request_id = s.next_request_id++;
  request.set_request_id(request_id);

  s.watchdog.Arm(s.options.command_timeout);
  if (!s.rw->Write(request)) return s.Broken("a write");
  v1::SessionResponse response;
  if (!s.rw->Read(&response)) return s.Broken("a read");
  s.watchdog.Disarm();

  if (response.request_id() != request_id) {
    // Responses are strictly ordered; a mismatch means the stream cannot be trusted any more.
    absl::Status mismatch = absl::InternalError(
        absl::StrCat("attnd answered request_id ", response.request_id(), " while ", request_id,
                     " was expected"));
    Abort();
    s.final_status = mismatch;
    return mismatch;
  }
  if (absl::Status status = FromWireCode(response.code(), response.message()); !status.ok()) {
    return status;
  }
  return response;
}

absl::Status Session::Close() {
  Stream& s = *stream_;
  if (!s.open) return s.final_status;
  s.watchdog.Arm(s.options.close_timeout);
  s.rw->WritesDone();
  // Drain anything the daemon still sends (nothing, normally) so Finish can complete.
  v1::SessionResponse ignored;
  while (s.rw->Read(&ignored)) {
  }
  s.watchdog.Disarm();
  return s.Finish(s.options.close_timeout);
}

void Session::Abort() {
  Stream& s = *stream_;
  if (!s.open) return;
  s.context.TryCancel();
  (void)s.Finish(s.options.close_timeout);
}

}  // namespace attnd::client
