// A session opened with the unary OpenSession call: every command is one unary RPC that carries
// the session id in the "x-attnd-session" metadata header. The daemon releases the session on
// CloseSession (the destructor sends it) or when no call names it for its lease (the client died).
//
// Useful from environments without streaming, and to test the unary path; a serving loop should
// prefer Session (session.h).
//
// Thread-safety: one thread at a time, like Session (each call has its own gRPC context, but the
// daemon orders a session's commands only within one caller's sequence).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attnd/client/session_api.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"

namespace attnd::client {

// The metadata key that names the session of a unary call.
inline constexpr char kSessionMetadataKey[] = "x-attnd-session";

struct UnarySessionOptions {
  std::string client_name = "attnd-cpp-client";
  // Lease: released after this long without a call. 0 = the daemon's --session_lease_ms.
  uint32_t lease_ms = 0;
  // Deadline of each unary call.
  absl::Duration call_timeout = absl::Seconds(60);
};

class UnarySession final : public SessionApi {
 public:
  static absl::StatusOr<std::unique_ptr<UnarySession>> Open(
      std::shared_ptr<grpc::Channel> channel, const UnarySessionOptions& options = {});
  // Closes the session unless Close() or Release() was called.
  ~UnarySession() override;
  UnarySession(const UnarySession&) = delete;
  UnarySession& operator=(const UnarySession&) = delete;

  const std::string& session_id() const override { return session_id_; }
  // The lease in force, as the daemon reported it.
  uint32_t lease_ms() const { return lease_ms_; }

  absl::StatusOr<v1::SessionResponse> Execute(v1::SessionRequest request) override;

  // Sends CloseSession. Idempotent (later calls return OK without a round trip).
  absl::Status Close();
  // Forgets the session without closing it: the daemon releases it when its lease runs out.
  void Release() { closed_ = true; }

  // Prepares a context for a unary call in this session (deadline + metadata), for callers that
  // use the generated stub directly.
  void PrepareContext(grpc::ClientContext* context) const;

 private:
  UnarySession(std::shared_ptr<grpc::Channel> channel, UnarySessionOptions options);

  struct Stubs;
  UnarySessionOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Stubs> stubs_;
  std::string session_id_;
  uint32_t lease_ms_ = 0;
  bool closed_ = false;
};

}  // namespace attnd::client
