// Core: ties the registries, validation, plans and the executor together. Each public method
// looks the session up (renewing its lease), takes the session's mutex, validates, and acts.
#include "server/core/core.h"

#include <unistd.h>

#include <atomic>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/core/buffer.h"
#include "server/core/dtype_convert.h"
#include "server/core/executor.h"
#include "server/core/host_budget.h"
#include "server/core/ids.h"
#include "server/core/peers.h"
#include "server/core/plan.h"
#include "server/core/pool.h"
#include "server/core/pool_registry.h"
#include "server/core/session.h"
#include "server/core/session_registry.h"
#include "server/core/validation.h"
#include "spdlog/spdlog.h"

namespace attnd::server {
namespace {

uint64_t EffectivePoolBudget(const CoreOptions& options, const kernels::BackendInfo& info) {
  if (options.max_pool_bytes != 0) return options.max_pool_bytes;
  return info.memory_total_bytes / 10 * 9;
}

uint64_t EffectiveHostBudget(const CoreOptions& options) {
  if (options.max_host_bytes != 0) return options.max_host_bytes;
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return uint64_t{4} << 30;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size) / 4;
}

// Room a reply needs around its payload (field tags, lengths, the Session stream's envelope).
constexpr uint64_t kReplyOverheadBytes = 256;
// Bytes of a packed repeated int32 entry at most (a varint of a value < 2^31).
constexpr uint64_t kVarint32Bytes = 5;

// Async completion: events per session (engine events opened by RegisterEvent).
constexpr size_t kMaxEventsPerSession = 1 << 10;
constexpr size_t kCudaIpcEventHandleBytes = 64;  // sizeof(cudaIpcEventHandle_t)

// The public interface takes std::string_view; this Abseil build has its own string_view type.
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// RESOURCE_EXHAUSTED for a quota: names the limit, its value and the flag that sets it.
absl::Status QuotaError(std::string_view what, int64_t limit, std::string_view flag,
                        std::string_view advice) {
  return absl::ResourceExhaustedError(absl::StrCat("quota: ", Absl(what), " (limit ", limit,
                                                   ", --", Absl(flag), "); ", Absl(advice)));
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

// NOT_FOUND for an id this session does not own: "<field>='<id>'<tail>". The id is cut to 80
// characters so that a huge id does not flood the message.
absl::Status NotOwnedError(std::string_view field, absl::string_view id, std::string_view tail) {
  return absl::NotFoundError(absl::StrCat(Absl(field), "='", Echo(id), "'", Absl(tail)));
}

// The value under `id` in one of a session's maps (plans, buffers, events), or NotOwnedError.
template <typename Map>
absl::StatusOr<typename Map::mapped_type*> FindOwned(Map& map, absl::string_view id,
                                                      std::string_view field,
                                                      std::string_view tail) {
  auto it = map.find(id);
  if (it == map.end()) return NotOwnedError(field, id, tail);
  return &it->second;
}

// Erases `id` from one of a session's maps, or NotOwnedError when it is not there.
template <typename Map>
absl::Status EraseOwned(Map& map, absl::string_view id, std::string_view field,
                        std::string_view tail) {
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

constexpr std::string_view kNoSuchEvent = ": no such event in this session";

// The one answer for a session that cannot be reached: unknown, closed, expired, or named by a
// caller that may not use it (so an id is never confirmed). Names the session by its log tag.
absl::Status NoSuchSessionError(absl::string_view session_id) {
  return absl::NotFoundError(absl::StrCat("session ",
                                          SessionLogTag({session_id.data(), session_id.size()}),
                                          " does not exist, has expired, or is not this "
                                          "caller's"));
}

// Whether `ref` may reach `session`: its own stream (or an in-process caller) always; a unary
// call only a leased session of the same identity.
bool Reachable(const Session& session, const SessionRef& ref) {
  if (ref.unary_caller == nullptr) return true;
  return session.binding == SessionBinding::kLeased && session.owner == *ref.unary_caller;
}

// Client names go into log lines: printable ASCII only, at most 256 bytes.
std::string SanitizeClientName(absl::string_view name) {
  std::string out = Echo(name, 256);
  return out;
}

}  // namespace

struct Core::State {
  State(const CoreOptions& options, std::unique_ptr<kernels::Backend> backend_in)
      : options(options),
        backend(std::move(backend_in)),
        pools(EffectivePoolBudget(options, backend->info())),
        host(EffectiveHostBudget(options), options.max_session_host_bytes),
        peers(options.max_peers, options.max_fds_per_peer,
              options.max_pending_fds > 0 ? options.max_pending_fds
                                          : options.max_peers * options.max_fds_per_peer) {}

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
    auto session = sessions.FindAndRenew(
        Absl(ref.id), absl::Now(), [&](const Session& s) { return Reachable(s, ref); });
    if (!session.ok()) return NoSuchSessionError(Absl(ref.id));
    Session& s = **session;
    const InflightScope inflight(s);
    if (inflight.count() > options.max_inflight_per_session) {
      return QuotaError(absl::StrCat("session ", s.tag, " has ", inflight.count() - 1,
                                     " commands in flight"),
                        options.max_inflight_per_session, "max_inflight_per_session",
                        "wait for answers before sending more, or use the Session stream");
    }
    absl::MutexLock lock(&s.mu);
    if (s.closed) return NoSuchSessionError(Absl(ref.id));
    return fn(s);
  }

  // A reply of up to `bytes` must fit the gRPC send limit (--max_message_bytes). Checked before
  // the command acts, so a command refused for its reply's size changed nothing.
  absl::Status CheckReplyFits(std::string_view what, uint64_t bytes, std::string_view advice) const {
    const uint64_t limit = options.max_message_bytes;
    if (limit == 0 || bytes + kReplyOverheadBytes <= limit) return absl::OkStatus();
    return absl::ResourceExhaustedError(
        absl::StrCat(Absl(what), ": the reply would be up to ", bytes + kReplyOverheadBytes,
                     " bytes, over --max_message_bytes=", limit, "; ", Absl(advice)));
  }

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
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu) {
    auto it = session.pools.find(pool_id);
    if (it != session.pools.end()) return it->second;
    if (std::shared_ptr<Pool> pool = pools.FindById(pool_id)) {
      return absl::PermissionDeniedError(
          absl::StrCat("pool_id='", pool_id, "': this session is not attached to pool '",
                       pool->name(), "'; call AttachPool first"));
    }
    return NotOwnedError("pool_id", pool_id, " does not exist");
  }

  // Reserves `count` page references of `usage` against --max_pages_per_session (released by
  // the caller with fetch_sub if the command then fails).
  absl::Status ReservePageReferences(SessionUsage& usage, int64_t count, std::string_view who) {
    if (TryReserve(usage.page_references, count, options.max_pages_per_session)) {
      return absl::OkStatus();
    }
    return QuotaError(absl::StrCat(Absl(who), " holds ", usage.page_references.load(),
                                   " page references and would receive ", count, " more"),
                      options.max_pages_per_session, "max_pages_per_session",
                      "free pages it no longer uses (FreePages)");
  }

  absl::StatusOr<std::shared_ptr<Plan>> FindPlan(Session& session, absl::string_view plan_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu) {
    // Plans of other sessions are not visible: the same answer as for an unknown id.
    auto plan = FindOwned(session.plans, plan_id, "plan_id", " is not a plan of this session");
    if (!plan.ok()) return plan.status();
    return **plan;
  }

  absl::StatusOr<kernels::Stream*> SessionStream(Session& session)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu) {
    if (session.stream == nullptr) {
      auto stream = backend->CreateStream();
      if (!stream.ok()) return stream.status();
      session.stream = *std::move(stream);
    }
    return session.stream.get();
  }

  absl::StatusOr<kernels::Event*> CompletionEvent(Session& session)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu) {
    if (session.completion_event == nullptr) {
      auto event = backend->CreateIpcEvent();
      if (!event.ok()) return event.status();
      session.completion_event = *std::move(event);
    }
    return session.completion_event.get();
  }

  // Before a Run/AppendKv: checks `completion` and `wait_event_id`, and makes the session's
  // stream wait on the named event. Nothing is enqueued when a check fails.
  absl::Status PrepareCompletion(Session& session, kernels::Stream* stream,
                                 const std::string& wait_event_id, v1::Completion completion)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu) {
    if (completion != v1::COMPLETION_SYNC && completion != v1::COMPLETION_ASYNC) {
      return absl::InvalidArgumentError(
          absl::StrCat("completion=", static_cast<int>(completion), " is not a Completion value"));
    }
    if (wait_event_id.empty()) return absl::OkStatus();
    auto event = FindOwned(session.events, wait_event_id, "wait_event_id", kNoSuchEvent);
    if (!event.ok()) return event.status();
    const std::unique_ptr<kernels::Event>& wait_on = **event;
    return backend->StreamWaitEvent(stream, *wait_on);
  }

  // After an ASYNC command's work was enqueued: records the completion event behind it. Backends
  // without events (CPU) ran the work synchronously (documented in the wire API).
  absl::Status FinishAsync(Session& session, kernels::Stream* stream)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu) {
    if (backend->host_accessible()) return backend->Synchronize(stream);
    auto event = CompletionEvent(session);
    if (!event.ok()) return backend->Synchronize(stream);  // no event: complete synchronously
    return backend->RecordEvent(**event, stream);
  }

  void CountTransfers(const TransferCounts& counts) {
    bytes_in.fetch_add(counts.bytes_in);
    bytes_out.fetch_add(counts.bytes_out);
  }

  // Drops the session's plans on `pool`, releases its page references there and detaches it;
  // frees the pool if it was the last session.
  void Detach(Session& session, const std::shared_ptr<Pool>& pool)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(session.mu) {
    for (auto it = session.plans.begin(); it != session.plans.end();) {
      if (it->second->pool == pool) {
        session.plans.erase(it++);
        plans.fetch_sub(1);
      } else {
        ++it;
      }
    }
    {
      absl::MutexLock lock(&pool->mu);
      pool->Detach(session.id);
    }
    session.pools.erase(pool->id());
    if (pools.RemoveIfUnused(pool)) {
      spdlog::info("pool '{}' ({}) released: its last session ({}) detached", pool->name(),
                   pool->id(), session.tag);
    }
  }

  // Releases everything a session holds. The session has left the registry already.
  void Release(Session& session, const char* reason) {
    absl::MutexLock lock(&session.mu);  // waits for an in-flight command of the session
    if (session.closed) return;
    session.closed = true;
    const size_t num_plans = session.plans.size();
    const size_t num_buffers = session.buffers.size();
    // Async work of the session may still read its buffers and pages: let it finish first.
    if (session.stream != nullptr) (void)backend->Synchronize(session.stream.get());
    while (!session.pools.empty()) {
      std::shared_ptr<Pool> pool = session.pools.begin()->second;
      Detach(session, pool);
    }
    plans.fetch_sub(static_cast<int64_t>(session.plans.size()));
    session.plans.clear();
    buffers.fetch_sub(static_cast<int64_t>(session.buffers.size()));
    session.buffers.clear();
    session.events.clear();
    session.completion_event.reset();
    session.stream.reset();
    session.staging = StagingArea();
    spdlog::info("session {} ('{}') closed ({}): released {} plan(s), {} buffer(s)", session.tag,
                 session.client_name, reason, num_plans, num_buffers);
  }
};

absl::StatusOr<std::unique_ptr<Core>> Core::Create(const CoreOptions& options,
                                                   std::unique_ptr<kernels::Backend> backend) {
  if (backend == nullptr) return absl::InvalidArgumentError("backend is null");
  if (options.session_lease <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session_lease=", absl::FormatDuration(options.session_lease), " must be positive"));
  }
  for (const auto& [name, value, minimum] :
       {std::tuple<const char*, int64_t, int64_t>{"max_sessions", options.max_sessions, 1},
        {"max_pages_per_session", options.max_pages_per_session, 0},
        {"max_buffers_per_session", options.max_buffers_per_session, 1},
        {"max_plans_per_session", options.max_plans_per_session, 1},
        {"max_inflight_per_session", options.max_inflight_per_session, 1},
        {"max_references_per_page", options.max_references_per_page, 2},
        {"max_peers", options.max_peers, 1},
        {"max_fds_per_peer", options.max_fds_per_peer, 1}}) {
    if (value < minimum) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "=", value, " must be at least ", minimum));
    }
  }
  if (options.max_session_lease < options.session_lease) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_session_lease=", absl::FormatDuration(options.max_session_lease),
        " is shorter than session_lease=", absl::FormatDuration(options.session_lease)));
  }
  const uint64_t budget = EffectivePoolBudget(options, backend->info());
  if (budget == 0) {
    return absl::InvalidArgumentError(
        "the pool budget is 0: set max_pool_bytes (the backend reports no memory)");
  }
  auto state = std::make_unique<State>(options, std::move(backend));
  spdlog::info("attnd core {}: backend {} on {}, pool budget {} bytes, host budget {} bytes "
               "({} per session)",
               options.version, state->backend->info().name, state->backend->info().device,
               budget, state->host.max_host_bytes(), options.max_session_host_bytes);
  return std::unique_ptr<Core>(new Core(std::move(state)));
}

Core::Core(std::unique_ptr<State> state) : state_(std::move(state)) {}

Core::~Core() { CloseAll(); }

v1::ServerInfo Core::GetServerInfo() const {
  const kernels::BackendInfo& info = state_->backend->info();
  v1::ServerInfo out;
  out.set_version(state_->options.version);
  out.set_backend(info.name);
  out.set_device(info.device);
  out.set_memory_total_bytes(state_->pools.max_bytes());
  out.set_memory_free_bytes(state_->pools.max_bytes() - state_->pools.allocated_bytes());
  for (kernels::DType t : info.kv_dtypes) out.add_kv_dtypes(ToProtoDType(t));
  for (kernels::DType t : info.q_dtypes) out.add_q_dtypes(ToProtoDType(t));
  for (int32_t d : info.head_dims) out.add_head_dims(d);
  for (int32_t p : info.page_sizes) out.add_page_sizes(p);
  out.set_max_page_size(kMaxPageSize);
  out.set_tensor_alignment_bytes(info.tensor_alignment_bytes);
  out.set_cuda_ipc(info.cuda_ipc);
  out.set_shared_memory(state_->backend->host_accessible());
  out.set_max_message_bytes(state_->options.max_message_bytes);
  out.set_peer_socket(state_->peer_socket_path);
  return out;
}

void Core::SetPeerSocketPath(std::string path) { state_->peer_socket_path = std::move(path); }

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
  auto session = std::make_shared<Session>(NewSessionId(), SanitizeClientName(request.client_name()),
                                           binding, lease, owner);
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
  std::shared_ptr<Session> session = state_->sessions.Remove(
      Absl(ref.id), [&](const Session& s) { return Reachable(s, ref); });
  if (session == nullptr) return NoSuchSessionError(Absl(ref.id));
  state_->Release(*session, "closed by the client");
  return absl::OkStatus();
}

absl::StatusOr<v1::CreatePoolResponse> Core::CreatePool(SessionRef session_ref,
                                                        const v1::CreatePoolRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::CreatePoolResponse> {
    auto geometry = ValidateCreatePool(request, st.backend->info());
    if (!geometry.ok()) return geometry.status();
    auto bookkeeping = st.host.Charge(session.usage, Pool::BookkeepingBytes(*geometry),
                                      absl::StrCat("the page bookkeeping of pool '",
                                                   request.name(), "' (", geometry->num_pages,
                                                   " pages)"));
    if (!bookkeeping.ok()) return bookkeeping.status();
    if (auto s = st.pools.Reserve(request.name(), geometry->total_bytes); !s.ok()) return s;
    auto pool = Pool::Create(NewRandomId("p-"), request.name(), *geometry, *st.backend,
                             session.owner.principal, st.options.max_references_per_page,
                             *std::move(bookkeeping));
    if (!pool.ok()) {
      st.pools.CancelReservation(request.name(), geometry->total_bytes);
      return pool.status();
    }
    {
      absl::MutexLock lock(&(*pool)->mu);
      (*pool)->Attach(session.id, session.usage);
    }
    st.pools.Insert(*pool);
    session.pools[(*pool)->id()] = *pool;
    spdlog::info("pool '{}' ({}) created by session {}: {} layers x {} pages x {} tokens, "
                 "{} kv heads, head_dim {}, {}, {} bytes",
                 (*pool)->name(), (*pool)->id(), session.tag, geometry->num_layers,
                 geometry->num_pages, geometry->page_size, geometry->num_kv_heads,
                 geometry->head_dim, kernels::DTypeName(geometry->kv_dtype),
                 geometry->total_bytes);
    v1::CreatePoolResponse response;
    *response.mutable_pool() = State::InfoFor(**pool, session);
    return response;
  });
}

absl::StatusOr<v1::AttachPoolResponse> Core::AttachPool(SessionRef session_ref,
                                                        const v1::AttachPoolRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::AttachPoolResponse> {
    if (auto s = ValidatePoolName(request.name()); !s.ok()) return s;
    auto pool = st.pools.AttachByName(request.name(), session.id, session.usage,
                                      session.owner.principal, request.attach_token());
    if (!pool.ok()) return pool.status();
    session.pools[(*pool)->id()] = *pool;
    spdlog::info("session {} attached to pool '{}' ({})", session.tag, (*pool)->name(),
                 (*pool)->id());
    v1::AttachPoolResponse response;
    *response.mutable_pool() = State::InfoFor(**pool, session);
    return response;
  });
}

absl::StatusOr<v1::DescribePoolResponse> Core::DescribePool(
    SessionRef session_ref, const v1::DescribePoolRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::DescribePoolResponse> {
    auto pool = st.AttachedPool(session, request.pool_id());
    if (!pool.ok()) return pool.status();
    v1::DescribePoolResponse response;
    *response.mutable_pool() = State::InfoFor(**pool, session);
    return response;
  });
}

absl::StatusOr<v1::DeletePoolResponse> Core::DeletePool(SessionRef session_ref,
                                                        const v1::DeletePoolRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::DeletePoolResponse> {
    auto pool = st.AttachedPool(session, request.pool_id());
    if (!pool.ok()) return pool.status();
    spdlog::info("session {} detaches from pool '{}' ({})", session.tag, (*pool)->name(),
                 (*pool)->id());
    st.Detach(session, *pool);
    return v1::DeletePoolResponse();
  });
}

absl::StatusOr<v1::AllocatePagesResponse> Core::AllocatePages(
    SessionRef session_ref, const v1::AllocatePagesRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::AllocatePagesResponse> {
    auto pool = st.AttachedPool(session, request.pool_id());
    if (!pool.ok()) return pool.status();
    if (auto s = ValidatePageCount(request.count()); !s.ok()) return s;
    if (auto s = st.CheckReplyFits(absl::StrCat("AllocatePages count=", request.count()),
                                   kVarint32Bytes * static_cast<uint64_t>(request.count()),
                                   "allocate in smaller batches");
        !s.ok()) {
      return s;
    }
    Pool& p = **pool;
    SessionUsage& usage = *session.usage;
    if (auto s = st.ReservePageReferences(usage, request.count(), "this session"); !s.ok()) {
      return s;
    }
    v1::AllocatePagesResponse response;
    {
      absl::MutexLock lock(&p.mu);
      PoolAttachment& mine = State::AttachmentOf(p, session);
      absl::Status sized = p.SizeLedgers(mine, st.host);
      auto pages = sized.ok() ? p.allocator.Allocate(request.count(), mine.held, p.name())
                              : absl::StatusOr<std::vector<int32_t>>(sized);
      if (!pages.ok()) {
        usage.page_references.fetch_sub(request.count());
        return pages.status();
      }
      response.mutable_page_ids()->Add(pages->begin(), pages->end());
      response.set_free_pages(p.allocator.free_pages());
    }
    // The new pages are this session's alone (only it could share them, and it is busy here),
    // so they are cleared outside the pool's lock, and finished before the reply: nobody reads
    // a page before its previous owner's K/V is gone.
    absl::Status cleared = [&]() -> absl::Status {
      auto stream = st.SessionStream(session);
      if (!stream.ok()) return stream.status();
      if (auto s = p.ClearPages(response.page_ids(), *st.backend, *stream); !s.ok()) return s;
      return st.backend->Synchronize(*stream);
    }();
    if (!cleared.ok()) {
      absl::MutexLock lock(&p.mu);
      std::vector<int32_t> pages(response.page_ids().begin(), response.page_ids().end());
      (void)p.allocator.Release(pages, State::AttachmentOf(p, session).held);
      usage.page_references.fetch_sub(request.count());
      return absl::Status(cleared.code(), absl::StrCat("clearing the allocated pages failed: ",
                                                       cleared.message()));
    }
    spdlog::debug("session {} allocated {} page(s) of pool '{}'", session.tag, request.count(),
                 p.name());
    return response;
  });
}

absl::StatusOr<v1::FreePagesResponse> Core::FreePages(SessionRef session_ref,
                                                      const v1::FreePagesRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::FreePagesResponse> {
    auto pool = st.AttachedPool(session, request.pool_id());
    if (!pool.ok()) return pool.status();
    Pool& p = **pool;
    const absl::Span<const int32_t> ids(request.page_ids().data(), request.page_ids_size());
    if (auto s = ValidatePageIds(ids, "page_ids", p.geometry().num_pages, p.name()); !s.ok()) {
      return s;
    }
    absl::MutexLock lock(&p.mu);
    PoolAttachment& mine = State::AttachmentOf(p, session);
    if (auto s = CheckPagesHeld(ids, "page_ids", mine.held, p.name()); !s.ok()) return s;
    if (auto s = p.allocator.Release(ids, mine.held); !s.ok()) return s;
    session.usage->page_references.fetch_sub(static_cast<int64_t>(ids.size()));
    v1::FreePagesResponse response;
    response.set_free_pages(p.allocator.free_pages());
    return response;
  });
}

absl::StatusOr<v1::ForkPagesResponse> Core::ForkPages(SessionRef session_ref,
                                                      const v1::ForkPagesRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::ForkPagesResponse> {
    auto pool = st.AttachedPool(session, request.pool_id());
    if (!pool.ok()) return pool.status();
    Pool& p = **pool;
    const absl::Span<const int32_t> ids(request.page_ids().data(), request.page_ids_size());
    if (auto s = ValidatePageIds(ids, "page_ids", p.geometry().num_pages, p.name()); !s.ok()) {
      return s;
    }
    if (!request.target_session_id().empty() &&
        !ConstantTimeEquals(request.target_session_id(), session.id)) {
      return absl::FailedPreconditionError(
          "target_session_id names another session: references go to another session only "
          "through its fork grant (set target_grant to the receiver's PoolInfo.fork_grant)");
    }
    if (auto s = st.CheckReplyFits(absl::StrCat("ForkPages of ", ids.size(), " pages"),
                                   kVarint32Bytes * ids.size(), "fork in smaller batches");
        !s.ok()) {
      return s;
    }
    absl::MutexLock lock(&p.mu);
    PoolAttachment& mine = State::AttachmentOf(p, session);
    if (auto s = CheckPagesHeld(ids, "page_ids", mine.held, p.name()); !s.ok()) return s;
    PoolAttachment* target = &mine;
    if (!request.target_grant().empty()) {
      target = p.FindByGrant(request.target_grant(), nullptr);
      if (target == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(
            "target_grant is not the fork grant of a session attached to pool '", p.name(),
            "' (grants end when their session detaches)"));
      }
    }
    const bool to_self = target == &mine;
    if (auto s = st.ReservePageReferences(*target->usage, static_cast<int64_t>(ids.size()),
                                          to_self ? "this session" : "the receiving session");
        !s.ok()) {
      return s;
    }
    absl::Status added = p.SizeLedgers(*target, st.host);
    if (added.ok()) added = p.allocator.AddReferences(ids, target->held);
    if (!added.ok()) {
      target->usage->page_references.fetch_sub(static_cast<int64_t>(ids.size()));
      return added;
    }
    v1::ForkPagesResponse response;
    for (const int32_t page : ids) response.add_refcounts(p.allocator.refcount(page));
    return response;
  });
}

absl::StatusOr<v1::RegisterBufferResponse> Core::RegisterBuffer(
    SessionRef session_ref, const v1::RegisterBufferRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::RegisterBufferResponse> {
    if (auto s = ValidateRegisterBuffer(request); !s.ok()) return s;
    if (static_cast<int64_t>(session.buffers.size()) >= st.options.max_buffers_per_session) {
      return QuotaError(absl::StrCat("this session has ", session.buffers.size(),
                                     " buffers registered"),
                        st.options.max_buffers_per_session, "max_buffers_per_session",
                        "unregister buffers it no longer uses");
    }
    absl::StatusOr<std::unique_ptr<RegisteredBuffer>> buffer;
    if (request.has_shared_memory_fd()) {
      if (!st.backend->host_accessible()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "shared_memory_fd buffers need a backend that reads host memory; the ",
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
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::UnregisterBufferResponse> {
    if (auto s = EraseOwned(session.buffers, request.buffer_id(), "buffer_id",
                            " is not a buffer of this session");
        !s.ok()) {
      return s;
    }
    st.buffers.fetch_sub(1);
    return v1::UnregisterBufferResponse();
  });
}

absl::StatusOr<v1::CreatePlanResponse> Core::CreatePlan(SessionRef session_ref,
                                                        const v1::CreatePlanRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::CreatePlanResponse> {
    auto pool = st.AttachedPool(session, request.pool_id());
    if (!pool.ok()) return pool.status();
    if (static_cast<int64_t>(session.plans.size()) >= st.options.max_plans_per_session) {
      return QuotaError(absl::StrCat("this session has ", session.plans.size(), " plans"),
                        st.options.max_plans_per_session, "max_plans_per_session",
                        "delete plans it no longer uses (DeletePlan)");
    }
    auto charge = st.host.Charge(session.usage, PlanHostBytes(request),
                                 absl::StrCat("a plan of ", request.kv_indices_size(),
                                              " page entries"));
    if (!charge.ok()) return charge.status();
    auto stream = st.SessionStream(session);
    if (!stream.ok()) return stream.status();
    auto plan = BuildPlan(request, *pool, session.id, *st.backend, *stream, NewRandomId("plan-"),
                          *std::move(charge), st.host);
    if (!plan.ok()) return plan.status();
    v1::CreatePlanResponse response;
    response.set_plan_id((*plan)->id);
    response.set_batch_size((*plan)->batch_size);
    response.set_qo_tokens((*plan)->qo_tokens);
    response.set_kv_tokens((*plan)->kv_tokens);
    spdlog::debug("session {} created plan {}: batch {}, {} query / {} kv tokens", session.tag,
                 (*plan)->id, (*plan)->batch_size, (*plan)->qo_tokens, (*plan)->kv_tokens);
    session.plans[(*plan)->id] = *std::move(plan);
    st.plans.fetch_add(1);
    return response;
  });
}

absl::StatusOr<v1::DeletePlanResponse> Core::DeletePlan(SessionRef session_ref,
                                                        const v1::DeletePlanRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::DeletePlanResponse> {
    auto plan = st.FindPlan(session, request.plan_id());
    if (!plan.ok()) return plan.status();
    UnpinPlan(**plan, session.id);
    session.plans.erase((*plan)->id);
    st.plans.fetch_sub(1);
    return v1::DeletePlanResponse();
  });
}

absl::StatusOr<v1::AppendKvResponse> Core::AppendKv(SessionRef session_ref,
                                                    const v1::AppendKvRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::AppendKvResponse> {
    auto plan = st.FindPlan(session, request.plan_id());
    if (!plan.ok()) return plan.status();
    if (auto s = CheckPlanWritable(**plan, session.id); !s.ok()) return s;
    auto stream = st.SessionStream(session);
    if (!stream.ok()) return stream.status();
    if (auto s = st.PrepareCompletion(session, *stream, request.wait_event_id(),
                                      request.completion());
        !s.ok()) {
      return s;
    }
    const bool async = request.completion() == v1::COMPLETION_ASYNC;
    TransferCounts counts;
    const ExecContext ctx{*st.backend, *stream, session.staging, session.buffers, !async};
    absl::Status s = ExecuteAppendKv(**plan, request, ctx, &counts);
    if (s.ok() && async) s = st.FinishAsync(session, *stream);
    st.CountTransfers(counts);
    if (spdlog::default_logger_raw()->should_log(spdlog::level::debug)) {
      spdlog::debug("session {} append_kv plan {} layer {}: {}", session.tag, (*plan)->id,
                    request.layer(), s.ok() ? std::string("ok") : s.ToString());
    }
    if (!s.ok()) return s;
    return v1::AppendKvResponse();
  });
}

absl::StatusOr<v1::RunResponse> Core::Run(SessionRef session_ref,
                                          const v1::RunRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::RunResponse> {
    auto plan = st.FindPlan(session, request.plan_id());
    if (!plan.ok()) return plan.status();
    const bool appends = request.k().data_case() != v1::Tensor::DATA_NOT_SET ||
                         request.v().data_case() != v1::Tensor::DATA_NOT_SET;
    if (appends) {
      if (auto s = CheckPlanWritable(**plan, session.id); !s.ok()) return s;
    }
    auto stream = st.SessionStream(session);
    if (!stream.ok()) return stream.status();
    const bool async = request.completion() == v1::COMPLETION_ASYNC;
    if (async && request.o().data_case() != v1::Tensor::kBuffer) {
      return absl::InvalidArgumentError(
          "completion=COMPLETION_ASYNC needs o in a registered buffer (inline outputs would need "
          "a synchronous copy); set o.buffer or use COMPLETION_SYNC");
    }
    if (async && request.options().return_lse() &&
        request.lse().data_case() != v1::Tensor::kBuffer) {
      return absl::InvalidArgumentError(
          "completion=COMPLETION_ASYNC with options.return_lse needs lse in a registered buffer");
    }
    if (auto s = st.CheckReplyFits("Run", InlineReplyBytes(**plan, request),
                                   "write o and lse to registered buffers instead of receiving "
                                   "them inline");
        !s.ok()) {
      return s;
    }
    if (auto s = st.PrepareCompletion(session, *stream, request.wait_event_id(),
                                      request.completion());
        !s.ok()) {
      return s;
    }
    TransferCounts counts;
    const ExecContext ctx{*st.backend, *stream, session.staging, session.buffers, !async};
    auto response = ExecuteRun(**plan, request, ctx, &counts);
    if (response.ok() && async) {
      if (auto s = st.FinishAsync(session, *stream); !s.ok()) response = s;
    }
    st.CountTransfers(counts);
    if (spdlog::default_logger_raw()->should_log(spdlog::level::debug)) {
      spdlog::debug("session {} run plan {} layer {}{}: {}", session.tag, (*plan)->id,
                    request.layer(), appends ? " (+append)" : "",
                    response.ok() ? std::string("ok") : response.status().ToString());
    }
    return response;
  });
}

absl::StatusOr<v1::RegisterEventResponse> Core::RegisterEvent(
    SessionRef session_ref, const v1::RegisterEventRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::RegisterEventResponse> {
    if (request.ipc_event_handle().size() != kCudaIpcEventHandleBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("ipc_event_handle has ", request.ipc_event_handle().size(),
                       " bytes, expected ", kCudaIpcEventHandleBytes, " (cudaIpcEventHandle_t)"));
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
    spdlog::info("session {} registered event {} (device {})", session.tag, id, request.device());
    v1::RegisterEventResponse response;
    response.set_event_id(std::move(id));
    return response;
  });
}

absl::StatusOr<v1::UnregisterEventResponse> Core::UnregisterEvent(
    SessionRef session_ref, const v1::UnregisterEventRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::UnregisterEventResponse> {
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
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::GetCompletionEventResponse> {
    auto event = st.CompletionEvent(session);
    if (!event.ok()) return event.status();
    std::string handle = (*event)->ipc_handle();
    if (handle.empty()) return absl::InternalError("the completion event has no IPC handle");
    v1::GetCompletionEventResponse response;
    response.set_ipc_event_handle(std::move(handle));
    response.set_device(st.backend->info().device_ordinal);
    return response;
  });
}

absl::StatusOr<std::string> Core::AddPeer(const PeerCredentials& credentials) {
  auto key = state_->peers.Add(credentials);
  if (key.ok()) {
    spdlog::info("peer connected: pid {} uid {} gid {}", credentials.pid, credentials.uid,
                 credentials.gid);
  }
  return key;
}

void Core::RemovePeer(std::string_view key) {
  if (!state_->peers.Remove(Absl(key))) return;
  // Its unary sessions' leases end now; ExpireIdleSessions releases them on its next round. Not
  // released here: that would wait for a command still running in one of them, and the peer
  // socket's thread (which calls this) serves every client.
  const int ended = state_->sessions.EndLeasesIf(
      [&](const Session& s) { return s.binding == SessionBinding::kLeased && s.owner.peer == key; });
  if (ended > 0) spdlog::info("a peer left: {} unary session(s) end with it", ended);
}

absl::StatusOr<Identity> Core::PeerIdentity(std::string_view key) const {
  return state_->peers.Lookup(Absl(key));
}

absl::StatusOr<std::string> Core::AddPeerFd(std::string_view key, int fd) {
  return state_->peers.AddFd(Absl(key), ScopedFd(fd));
}

int Core::ExpireIdleSessions(absl::Time now) {
  std::vector<std::shared_ptr<Session>> expired = state_->sessions.RemoveExpired(now);
  for (const auto& session : expired) state_->Release(*session, "lease expired");
  return static_cast<int>(expired.size());
}

CoreStats Core::Stats() const {
  CoreStats stats;
  stats.sessions = state_->sessions.size();
  stats.plans = state_->plans.load();
  stats.buffers = state_->buffers.load();
  stats.pool_bytes_allocated = state_->pools.allocated_bytes();
  stats.bytes_in = state_->bytes_in.load();
  stats.bytes_out = state_->bytes_out.load();
  stats.host_bytes = state_->host.used_bytes();
  stats.peers = state_->peers.size();
  for (const auto& pool : state_->pools.Snapshot()) {
    PoolStats p;
    p.pool_id = pool->id();
    p.name = pool->name();
    p.num_pages = pool->geometry().num_pages;
    p.total_bytes = pool->total_bytes();
    {
      absl::MutexLock lock(&pool->mu);
      p.free_pages = pool->allocator.free_pages();
      p.attached_sessions = static_cast<int32_t>(pool->attachments.size());
    }
    stats.pools.push_back(std::move(p));
  }
  return stats;
}

absl::Status Core::Health() const { return state_->backend->Health(); }

void Core::CloseAll() {
  std::vector<std::shared_ptr<Session>> all = state_->sessions.RemoveAll();
  for (const auto& session : all) state_->Release(*session, "daemon shutdown");
  if (!all.empty()) spdlog::info("closed {} session(s) at shutdown", all.size());
}

}  // namespace attnd::server
