// Core, the hub: creation (options checked), server info, stats, health, lease expiry and
// shutdown. The State it owns (registries, budgets, counters, locking) is in core_state.h; the
// commands' bodies are in commands/<topic>.cc (sessions, pools, pages, buffers, plans, runs,
// events, peers).
#include "server/core/core.h"

#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/core/core_state.h"
#include "server/core/dtype_convert.h"
#include "spdlog/spdlog.h"

namespace attnd::server {

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
  spdlog::info(
      "attnd core {}: backend {} on {}, pool budget {} bytes, host budget {} bytes "
      "({} per session)",
      options.version, state->backend->info().name, state->backend->info().device, budget,
      state->host.max_host_bytes(), options.max_session_host_bytes);
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
  for (const std::string& line : info.kernel_paths) out.add_kernel_paths(line);
  return out;
}

void Core::SetPeerSocketPath(std::string path) { state_->peer_socket_path = std::move(path); }

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
  stats.max_host_bytes = state_->host.max_host_bytes();
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
