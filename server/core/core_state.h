// The Core's hub, internal to server/core: the State every command works on (registries, budgets,
// counters) with its locking, and the lookups and error shapes the commands share. Core itself
// (core.h) is the public face; its command bodies live in server/core/commands/<topic>.cc, one
// file per topic, each using only what this header offers.
//
// Locking: a command runs inside State::WithSession, which finds the session (renewing its
// lease), counts it in flight and holds the session's mutex for the whole command. Pool mutexes
// are taken inside it (session.mu before pool.mu, never the other way).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/core/core.h"
#include "server/core/executor.h"
#include "server/core/host_budget.h"
#include "server/core/ids.h"
#include "server/core/peers.h"
#include "server/core/plan.h"
#include "server/core/pool.h"
#include "server/core/pool_registry.h"
#include "server/core/request_rules.h"
#include "server/core/session.h"
#include "server/core/session_registry.h"
#include "server/core/validation.h"

namespace attnd::server {

// Bytes of a packed repeated int32 entry at most (a varint of a value < 2^31).
inline constexpr uint64_t kVarint32Bytes = 5;

// The public interface takes std::string_view; this Abseil build has its own string_view type.
inline absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// RESOURCE_EXHAUSTED for a quota: names the limit, its value and the flag that sets it.
absl::Status QuotaError(std::string_view what, int64_t limit, std::string_view flag,
                        std::string_view advice);

// The one answer for a session that cannot be reached: unknown, closed, expired, or named by a
// caller that may not use it (so an id is never confirmed). Names the session by its log tag.
absl::Status NoSuchSessionError(absl::string_view session_id);

// Whether `ref` may reach `session`: its own stream (or an in-process caller) always; a unary
// call only a leased session of the same identity.
bool Reachable(const Session& session, const SessionRef& ref);

// The value under `id` in one of a session's maps (plans, buffers, events), or NotOwnedError.
template <typename Map>
absl::StatusOr<typename Map::mapped_type*> FindOwned(Map& map, absl::string_view id,
                                                     absl::string_view field,
                                                     absl::string_view tail) {
  auto it = map.find(id);
  if (it == map.end()) return NotOwnedError(field, id, tail);
  return &it->second;
}

// Erases `id` from one of a session's maps, or NotOwnedError when it is not there.
template <typename Map>
absl::Status EraseOwned(Map& map, absl::string_view id, absl::string_view field,
                        absl::string_view tail) {
  auto it = map.find(id);
  if (it == map.end()) return NotOwnedError(field, id, tail);
  map.erase(it);
  return absl::OkStatus();
}

// Stores `value` in one of a session's maps under a new random id starting with `prefix`.
template <typename Map, typename Value>
std::string InsertWithNewId(Map& map, absl::string_view prefix, Value value) {
  std::string id = NewRandomId(prefix);
  map[id] = std::move(value);
  return id;
}

// Counts a command of `session` in flight for the scope (max_inflight_per_session).
class InflightScope {
 public:
  explicit InflightScope(Session& session) : session_(session) {
    count_ = session_.inflight.fetch_add(1) + 1;
  }
  ~InflightScope() { session_.inflight.fetch_sub(1); }
  InflightScope(const InflightScope&) = delete;
  InflightScope& operator=(const InflightScope&) = delete;
  int64_t count() const { return count_; }

 private:
  Session& session_;
  int64_t count_;
};

// Points `session.command_charges` at the running command's message charges for the scope (the
// session's mutex is held throughout: one command at a time).
class CommandChargesScope {
 public:
  CommandChargesScope(Session& session, MessageCharges& charges)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu)
      : session_(session) {
    session_.command_charges = &charges;
  }
  ~CommandChargesScope() ABSL_NO_THREAD_SAFETY_ANALYSIS { session_.command_charges = nullptr; }
  CommandChargesScope(const CommandChargesScope&) = delete;
  CommandChargesScope& operator=(const CommandChargesScope&) = delete;

 private:
  Session& session_;
};

// Pool memory the daemon may hand out (max_pool_bytes, or 90% of the backend's memory).
uint64_t EffectivePoolBudget(const CoreOptions& options, const kernels::BackendInfo& info);

struct Core::State {
  State(const CoreOptions& options, std::unique_ptr<kernels::Backend> backend_in);

  const CoreOptions options;
  const std::unique_ptr<kernels::Backend> backend;
  SessionRegistry sessions;
  PoolRegistry pools;
  HostBudget host;
  PeerRegistry peers;
  std::string peer_socket_path;  // set once at start, before serving
  std::atomic<int64_t> plans{0};
  std::atomic<int64_t> buffers{0};
  std::atomic<uint64_t> bytes_in{0};
  std::atomic<uint64_t> bytes_out{0};
  // Serialises OpenSession's check of max_sessions with the registration.
  absl::Mutex open_mu;

  // Runs `fn(session)` with the session's mutex held; NOT_FOUND for unknown or closed sessions
  // and for sessions `ref` may not reach (whose lease is then not renewed either).
  template <typename Fn>
  auto WithSession(const SessionRef& ref, Fn&& fn) -> decltype(fn(std::declval<Session&>())) {
    auto session = sessions.FindAndRenew(Absl(ref.id), absl::Now(),
                                         [&](const Session& s) { return Reachable(s, ref); });
    if (!session.ok()) return NoSuchSessionError(Absl(ref.id));
    Session& s = **session;
    const InflightScope inflight(s);
    if (inflight.count() > options.max_inflight_per_session) {
      return InflightQuotaError(s, inflight.count());
    }
    // The request is held from here until its reply is written: charged before the command
    // waits for the session (queued commands count too).
    MessageCharges released_on_return;
    MessageCharges& charges = ref.charges != nullptr ? *ref.charges : released_on_return;
    if (ref.request_bytes > 0) {
      auto charge = host.Charge(s.usage, ref.request_bytes,
                                "the request message (as received, inline tensors included)");
      if (!charge.ok()) return charge.status();
      charges.request = *std::move(charge);
    }
    absl::MutexLock lock(&s.mu);
    if (s.closed) return NoSuchSessionError(Absl(ref.id));
    const CommandChargesScope command(s, charges);
    return fn(s);
  }
  absl::Status InflightQuotaError(const Session& session, int64_t inflight) const;

  // The attachment of `session` to `pool` (it is attached: AttachedPool checked).
  static PoolAttachment& AttachmentOf(Pool& pool, const Session& session)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(pool.mu) {
    return pool.Attach(session.id, session.usage);
  }

  // The pool's wire description as `session` sees it (with its fork grant).
  static v1::PoolInfo InfoFor(const Pool& pool, const Session& session) {
    return pool.Info(session.id);
  }

  // The pool `pool_id` if this session is attached to it. NOT_FOUND for an unknown id,
  // PERMISSION_DENIED for a pool the session is not attached to.
  absl::StatusOr<std::shared_ptr<Pool>> AttachedPool(Session& session, absl::string_view pool_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu);

  // Reserves `count` page references of `usage` against --max_pages_per_session (released by
  // the caller with fetch_sub if the command then fails).
  absl::Status ReservePageReferences(SessionUsage& usage, int64_t count, std::string_view who);

  // Plans of other sessions are not visible: the same answer as for an unknown id.
  absl::StatusOr<std::shared_ptr<Plan>> FindPlan(Session& session, absl::string_view plan_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu);

  // What a command that launches work (AppendKv, Run, MergeState, MergeStates) runs on: the
  // session's stream and the execution context over it (synchronous unless `completion` is
  // COMPLETION_ASYNC).
  struct StreamTarget {
    kernels::Stream* stream;
    ExecContext ctx;
  };
  absl::StatusOr<StreamTarget> FindStreamTarget(Session& session, v1::Completion completion)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu);
  // What a layer command (AppendKv, Run) runs on: its plan and the session's stream.
  struct LayerTarget {
    std::shared_ptr<Plan> plan;
    kernels::Stream* stream;
    ExecContext ctx;
  };
  absl::StatusOr<LayerTarget> FindLayerTarget(Session& session, absl::string_view plan_id,
                                              v1::Completion completion)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu);

  // What the request rules (request_rules.h) know about `session` and the daemon.
  // Inside WithSession only (the command's charges are set then).
  RequestScope ScopeFor(Session& session) ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu) {
    return RequestScope{
        session.id,
        session.events,
        backend->info(),
        options.max_message_bytes,
        &host,
        session.usage,
        session.command_charges == nullptr ? nullptr : &session.command_charges->reply};
  }

  // The session's stream (created on first use) and interprocess completion event.
  absl::StatusOr<kernels::Stream*> SessionStream(Session& session)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu);
  absl::StatusOr<kernels::Event*> CompletionEvent(Session& session)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu);

  // After an ASYNC command's work was enqueued: records the completion event behind it. Backends
  // without events (CPU) ran the work synchronously (documented in the wire API).
  absl::Status FinishAsync(Session& session, kernels::Stream* stream)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu);

  void CountTransfers(const TransferCounts& counts) {
    bytes_in.fetch_add(counts.bytes_in);
    bytes_out.fetch_add(counts.bytes_out);
  }

  // Drops the session's plans on `pool`, releases its page references there and detaches it;
  // frees the pool if it was the last session.
  void Detach(Session& session, const std::shared_ptr<Pool>& pool)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu);

  // Releases everything a session holds. The session has left the registry already.
  void Release(Session& session, const char* reason);
};

}  // namespace attnd::server
