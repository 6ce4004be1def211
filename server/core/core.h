// The daemon's core: sessions, pools, pages, buffers, plans and runs, on top of a kernels::Backend.
//
// Every method validates its request completely before touching backend memory and returns an
// absl::Status whose message names the offending field and value. The gRPC front (server/front)
// is a thin adapter over this class: it parses, calls one method, converts the status in one place
// and records metrics. Thread-safe: methods may be called concurrently from many gRPC threads.
//
// Where the code is: core.cc (creation, stats, health, shutdown) and core_state.h (the State:
// registries, budgets, locking) are the hub; each command's body is in commands/<topic>.cc.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attnd/kernels/backend.h"
#include "attnd/v1/attnd.pb.h"
#include "attnd/v1/session_commands.h"

namespace attnd::server {

namespace v1 = ::attnd::v1;

struct MessageCharges;  // host_budget.h

// Who is calling, as the front established it from the connection (peer credentials, token,
// client certificate); never taken from a request field. See the wire API's "Identity".
struct Identity {
  // "uid:1000" (unix peer credentials), "token:NAME" (bearer token), "tls:SUBJECT" (client
  // certificate), "tcp-anonymous" (TCP without a token); empty = nothing known about the caller.
  std::string principal;
  // The caller's peer key (unix socket peer connection); empty otherwise. Unary sessions opened
  // with one are reachable only with the same key.
  std::string peer;
  bool operator==(const Identity&) const = default;
};

// What the kernel reported about a process connected to the peer socket (SO_PEERCRED).
struct PeerCredentials {
  int32_t pid = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
};

// How a command names its session.
//   * SessionRef(id): the session's own handle, used by the Session stream that opened it (the
//     id comes from the daemon itself, never from the client) and by in-process callers.
//   * SessionRef::Unary(id, caller): a unary call naming the session by the id in its
//     x-attnd-session header, made by `caller`: it reaches only a leased session opened by the
//     same identity; anything else is NOT_FOUND, as for an id that does not exist.
struct SessionRef {
  SessionRef(std::string_view session_id) : id(session_id) {}    // NOLINT: implicit by design
  SessionRef(const std::string& session_id) : id(session_id) {}  // NOLINT
  SessionRef(const char* session_id) : id(session_id) {}         // NOLINT
  static SessionRef Unary(std::string_view session_id, const Identity& caller) {
    SessionRef ref(session_id);
    ref.unary_caller = &caller;
    return ref;
  }
  std::string_view id;
  const Identity* unary_caller = nullptr;  // not owned; outlives the call
  // The request's size as received (0: not charged, e.g. in-process calls) and where its
  // charges are kept until the reply is written (null: released when the command returns).
  // host_budget.h: MessageCharges.
  uint64_t request_bytes = 0;
  MessageCharges* charges = nullptr;  // not owned
};

struct CoreOptions {
  // Pool memory the daemon may hand out in total, bytes. 0 = 90% of the backend's memory.
  uint64_t max_pool_bytes = 0;
  // Default lease of unary sessions: released after this long without a call naming them.
  absl::Duration session_lease = absl::Seconds(30);
  // Longest lease a client may ask for (OpenSessionRequest.lease_ms is lowered to it), so that
  // abandoned sessions cannot hold their quota for days (--max_session_lease_ms).
  absl::Duration max_session_lease = absl::Minutes(10);
  // Unary sessions need a caller identity (a principal or a peer key): true on the daemon, whose
  // unix-socket callers present their peer key (UNAUTHENTICATED without one).
  bool unary_sessions_need_identity = false;
  // Largest request message accepted (reported in ServerInfo; enforced by the gRPC server).
  uint64_t max_message_bytes = 64ull << 20;
  std::string version = "0.1.0";

  // Quotas (RESOURCE_EXHAUSTED naming the limit and its flag when exceeded). They keep one
  // client, buggy or hostile, from starving the others or exhausting the daemon's host memory.
  // Live sessions of the whole daemon (--max_sessions).
  int64_t max_sessions = 4096;
  // Page references one session may hold over all its pools, however it got them: AllocatePages
  // and ForkPages (also references given to it by another session through its fork grant) are
  // refused before they would exceed it (--max_pages_per_session). 0 = no per-session limit:
  // the pools' sizes and max_references_per_page bound what a session can hold.
  int64_t max_pages_per_session = 0;
  // References one page may have in total (client references and plan pins), so that counts
  // can never wrap; ForkPages and CreatePlan beyond it are refused before anything is added.
  int32_t max_references_per_page = 1 << 20;
  // Registered buffers per session (--max_buffers_per_session).
  int64_t max_buffers_per_session = 1024;
  // Plans per session (--max_plans_per_session); every plan pins its pages and host memory.
  int64_t max_plans_per_session = 1 << 16;
  // Host memory the daemon spends on its clients' behalf (plan page tables, pool page
  // bookkeeping, page ledgers, the messages of commands in flight with their inline tensors),
  // charged before it is kept (HostBudget): in total
  // (--max_host_bytes; 0 = a quarter of the machine's physical memory) and per session
  // (--max_session_host_bytes).
  uint64_t max_host_bytes = 0;
  uint64_t max_session_host_bytes = 1ull << 30;
  // Processes connected to the peer socket at once, and shared-memory descriptors each may have
  // sent and not yet registered (each is an open file descriptor of the daemon).
  int64_t max_peers = 4096;
  int32_t max_fds_per_peer = 16;
  // Descriptors sent and not yet registered, all peers together; 0 = max_peers *
  // max_fds_per_peer. The daemon derives both from its RLIMIT_NOFILE budget.
  int64_t max_pending_fds = 0;
  // Commands of one session executing or waiting for the session at once
  // (--max_inflight_per_session); a session's commands run one at a time, so more unary calls
  // in parallel only queue up on the daemon's threads.
  int64_t max_inflight_per_session = 64;
};

// How a session was opened; decides how it ends (see the wire API's header comment).
enum class SessionBinding {
  kStream,  // bound to a Session stream: closed by the front when the stream ends
  kLeased,  // unary: closed by CloseSession or when its lease runs out
};

// Gauges for /metrics, read without blocking requests for long.
struct PoolStats {
  std::string pool_id;
  std::string name;
  int64_t num_pages = 0;
  int64_t free_pages = 0;
  uint64_t total_bytes = 0;
  int32_t attached_sessions = 0;
};
struct CoreStats {
  int64_t sessions = 0;
  int64_t plans = 0;
  int64_t buffers = 0;
  uint64_t pool_bytes_allocated = 0;
  uint64_t bytes_in = 0;        // tensor bytes read from requests and client buffers since start
  uint64_t bytes_out = 0;       // tensor bytes written to responses and client buffers since start
  uint64_t host_bytes = 0;      // host memory charged for clients' bookkeeping (HostBudget)
  uint64_t max_host_bytes = 0;  // its daemon-wide limit in force (--max_host_bytes or 1/4 of RAM)
  int64_t peers = 0;            // processes connected to the peer socket
  std::vector<PoolStats> pools;
};

class Core {
 public:
  static absl::StatusOr<std::unique_ptr<Core>> Create(const CoreOptions& options,
                                                      std::unique_ptr<kernels::Backend> backend);
  ~Core();
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  v1::ServerInfo GetServerInfo() const;
  // Where the front serves the peer socket (ServerInfo.peer_socket); set once at start.
  void SetPeerSocketPath(std::string path);

  // Opens a session owned by `owner` (the identity of the caller, or of the stream's client).
  absl::StatusOr<v1::OpenSessionResponse> OpenSession(const v1::OpenSessionRequest& request,
                                                      SessionBinding binding,
                                                      const Identity& owner = {});
  // Releases everything the session holds. NOT_FOUND for an unknown id.
  absl::Status CloseSession(SessionRef session);

  // Each command of ATTND_SESSION_COMMANDS (attnd/v1/session_commands.h) runs in a session:
  //   absl::StatusOr<v1::NameResponse> Name(SessionRef session, const v1::NameRequest& request);
  // NOT_FOUND if the session does not exist (or expired, or `session` is a unary reference of
  // another identity). A leased session's lease is renewed by every call that names it. The
  // async completion commands (RegisterEvent, UnregisterEvent, GetCompletionEvent) are
  // FAILED_PRECONDITION on backends without interprocess events.
#define ATTND_CORE_DECLARE_COMMAND(Name, field) \
  absl::StatusOr<v1::Name##Response> Name(SessionRef session, const v1::Name##Request& request);
  ATTND_SESSION_COMMANDS(ATTND_CORE_DECLARE_COMMAND)
#undef ATTND_CORE_DECLARE_COMMAND

  // Peers (the wire API's "Identity"): processes connected to the peer socket, which the front
  // serves (server/front/peer_socket.h).
  // A new peer with the kernel's credentials of its connection; returns its secret key.
  absl::StatusOr<std::string> AddPeer(const PeerCredentials& credentials);
  // The peer's connection closed: its key stops working, the descriptors it sent and nobody
  // registered are closed, and every unary session opened with its key is released.
  void RemovePeer(std::string_view key);
  // The identity of a caller presenting `key` (x-attnd-peer); UNAUTHENTICATED when unknown.
  absl::StatusOr<Identity> PeerIdentity(std::string_view key) const;
  // A shared-memory descriptor the peer sent (ownership taken, closed on error); returns the
  // one-time token that RegisterBuffer's shared_memory_fd takes. FAILED_PRECONDITION for a
  // descriptor that is not a memfd sealed against shrinking.
  absl::StatusOr<std::string> AddPeerFd(std::string_view key, int fd);

  // Closes leased sessions whose lease ran out before `now`; returns how many. The front calls
  // it periodically.
  int ExpireIdleSessions(absl::Time now);

  CoreStats Stats() const;
  // OK while the backend can serve (a sticky device error makes this fail for good).
  absl::Status Health() const;
  // Closes every session and releases every pool (graceful shutdown).
  void CloseAll();

 private:
  struct State;
  explicit Core(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace attnd::server
