// A session bound to the bidirectional Session stream: the low-overhead path for a serving loop.
//
// Open() starts the stream and sends `open` as its first message; the daemon releases everything
// the session holds (pages, buffers, plans, pool attachments) when the stream ends, which the
// destructor does cleanly (WritesDone + Finish). If the process dies the stream breaks and the
// daemon releases the session just the same.
//
// Commands are synchronous: Execute() writes one request and reads its response. A command that
// takes longer than SessionOptions::command_timeout cancels the stream (the session is then
// gone); a stream that broke (daemon gone, message too large, ...) fails this and every later
// command with the stream's final status.
//
// Thread-safety: one thread at a time (not internally locked; the commands of a stream are
// ordered anyway). Different Session objects are independent.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attnd/client/session_api.h"
#include "grpcpp/channel.h"

namespace attnd::client {

struct SessionOptions {
  std::string client_name = "attnd-cpp-client";  // shown in the daemon's logs
  // Longest wait for one command's response (including `open`); then the stream is cancelled.
  absl::Duration command_timeout = absl::Seconds(60);
  // Longest wait for the daemon to finish the stream on Close().
  absl::Duration close_timeout = absl::Seconds(5);
};

class Session final : public SessionApi {
 public:
  // Opens a stream on `channel` and the session on it. Returns the open response's error, or
  // UNAVAILABLE / DEADLINE_EXCEEDED when the daemon cannot be reached.
  static absl::StatusOr<std::unique_ptr<Session>> Open(std::shared_ptr<grpc::Channel> channel,
                                                       const SessionOptions& options = {});
  ~Session() override;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const std::string& session_id() const override;
  absl::StatusOr<v1::SessionResponse> Execute(v1::SessionRequest request) override;

  // Ends the stream cleanly; the daemon releases the session. Returns the stream's final status
  // (OK for a clean close). Idempotent.
  absl::Status Close();
  // Breaks the stream without a clean close (cancels the call), as a client that dies would.
  void Abort();
  // False once the stream was closed, aborted or broke.
  bool is_open() const;

 private:
  struct Stream;
  explicit Session(std::unique_ptr<Stream> stream);
  std::unique_ptr<Stream> stream_;
};

}  // namespace attnd::client
