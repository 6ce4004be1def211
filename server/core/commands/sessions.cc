// Session commands: OpenSession (quota, lease, owner) and CloseSession (releases everything the
// session holds, through the hub's Release).
#include <algorithm>
#include <utility>

#include "server/core/core_state.h"
#include "spdlog/spdlog.h"

namespace attnd::server {
namespace {

// Client names go into log lines: printable ASCII only, at most 256 bytes.
std::string SanitizeClientName(absl::string_view name) { return Echo(name, 256); }

}  // namespace

absl::StatusOr<v1::OpenSessionResponse> Core::OpenSession(const v1::OpenSessionRequest& request,
                                                          SessionBinding binding,
                                                          const Identity& owner) {
  const CoreOptions& options = state_->options;
  if (binding == SessionBinding::kLeased && options.unary_sessions_need_identity &&
      owner.principal.empty() && owner.peer.empty()) {
    return absl::UnauthenticatedError(
        "a unary session needs the caller's identity: on a unix socket, connect to the "
        "daemon's peer socket and send its key in x-attnd-peer (the attnd clients do), or use "
        "the Session stream");
  }
  const absl::Duration lease =
      request.lease_ms() > 0
          ? std::min(absl::Milliseconds(request.lease_ms()), options.max_session_lease)
          : options.session_lease;
  auto session = std::make_shared<Session>(
      NewSessionId(), SanitizeClientName(request.client_name()), binding, lease, owner);
  v1::OpenSessionResponse response;
  response.set_session_id(session->id);
  if (binding == SessionBinding::kLeased) {
    response.set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(lease)));
  }
  absl::MutexLock open_lock(&state_->open_mu);
  if (state_->sessions.size() >= state_->options.max_sessions) {
    return QuotaError(absl::StrCat("the daemon has ", state_->sessions.size(), " live sessions"),
                      state_->options.max_sessions, "max_sessions",
                      "close unused sessions (CloseSession, or end their streams)");
  }
  spdlog::info("session {} opened by '{}' ({}, {})", session->tag, session->client_name,
               binding == SessionBinding::kLeased
                   ? absl::StrCat("leased, ", absl::FormatDuration(lease))
                   : std::string("stream"),
               owner.principal.empty() ? std::string("no principal") : owner.principal);
  state_->sessions.Add(std::move(session), absl::Now());
  return response;
}

absl::Status Core::CloseSession(SessionRef ref) {
  std::shared_ptr<Session> session =
      state_->sessions.Remove(Absl(ref.id), [&](const Session& s) { return Reachable(s, ref); });
  if (session == nullptr) return NoSuchSessionError(Absl(ref.id));
  state_->Release(*session, "closed by the client");
  return absl::OkStatus();
}

}  // namespace attnd::server
