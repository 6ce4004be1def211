// The daemon's core: sessions, pools, pages, buffers, plans and runs, on top of a kernels::Backend.
//
// Every method validates its request completely before touching backend memory and returns an
// absl::Status whose message names the offending field and value. The gRPC front (server/service)
// is a thin adapter over this class: it parses, calls one method, converts the status in one place
// and records metrics. Thread-safe: methods may be called concurrently from many gRPC threads.
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

namespace attnd::server {

namespace v1 = ::attnd::v1;

struct CoreOptions {
  // Pool memory the daemon may hand out in total, bytes. 0 = 90% of the backend's memory.
  uint64_t max_pool_bytes = 0;
  // Default lease of unary sessions: released after this long without a call naming them.
  absl::Duration session_lease = absl::Seconds(30);
  // Largest request message accepted (reported in ServerInfo; enforced by the gRPC server).
  uint64_t max_message_bytes = 64ull << 20;
  std::string version = "0.1.0";

  // Quotas (RESOURCE_EXHAUSTED naming the limit and its flag when exceeded). They keep one
  // client, buggy or hostile, from starving the others or exhausting the daemon's host memory.
  // Live sessions of the whole daemon (--max_sessions).
  int64_t max_sessions = 4096;
  // Page references one session may hold through AllocatePages, over all its pools
  // (--max_pages_per_session); 0 = no limit beyond the pools' size. Forks received from another
  // session do not count against the receiver's AllocatePages (they take no free page).
  int64_t max_pages_per_session = 0;
  // Registered buffers per session (--max_buffers_per_session).
  int64_t max_buffers_per_session = 1024;
  // Plans per session (--max_plans_per_session); every plan pins its pages and host memory.
  int64_t max_plans_per_session = 1 << 16;
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
  uint64_t bytes_in = 0;   // tensor bytes read from requests and client buffers since start
  uint64_t bytes_out = 0;  // tensor bytes written to responses and client buffers since start
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

  absl::StatusOr<v1::OpenSessionResponse> OpenSession(const v1::OpenSessionRequest& request,
                                                      SessionBinding binding);
  // Releases everything the session holds. NOT_FOUND for an unknown id.
  absl::Status CloseSession(std::string_view session_id);

  // Each command runs in a session; NOT_FOUND if it does not exist (or expired). A leased
  // session's lease is renewed by every call that names it.
  absl::StatusOr<v1::CreatePoolResponse> CreatePool(std::string_view session_id,
                                                    const v1::CreatePoolRequest& request);
  absl::StatusOr<v1::AttachPoolResponse> AttachPool(std::string_view session_id,
                                                    const v1::AttachPoolRequest& request);
  absl::StatusOr<v1::DescribePoolResponse> DescribePool(std::string_view session_id,
                                                        const v1::DescribePoolRequest& request);
  absl::StatusOr<v1::DeletePoolResponse> DeletePool(std::string_view session_id,
                                                    const v1::DeletePoolRequest& request);
  absl::StatusOr<v1::AllocatePagesResponse> AllocatePages(std::string_view session_id,
                                                          const v1::AllocatePagesRequest& request);
  absl::StatusOr<v1::FreePagesResponse> FreePages(std::string_view session_id,
                                                  const v1::FreePagesRequest& request);
  absl::StatusOr<v1::ForkPagesResponse> ForkPages(std::string_view session_id,
                                                  const v1::ForkPagesRequest& request);
  absl::StatusOr<v1::RegisterBufferResponse> RegisterBuffer(
      std::string_view session_id, const v1::RegisterBufferRequest& request);
  absl::StatusOr<v1::UnregisterBufferResponse> UnregisterBuffer(
      std::string_view session_id, const v1::UnregisterBufferRequest& request);
  absl::StatusOr<v1::CreatePlanResponse> CreatePlan(std::string_view session_id,
                                                    const v1::CreatePlanRequest& request);
  absl::StatusOr<v1::DeletePlanResponse> DeletePlan(std::string_view session_id,
                                                    const v1::DeletePlanRequest& request);
  absl::StatusOr<v1::AppendKvResponse> AppendKv(std::string_view session_id,
                                                const v1::AppendKvRequest& request);
  absl::StatusOr<v1::RunResponse> Run(std::string_view session_id, const v1::RunRequest& request);

  // Async completion (interprocess events; FAILED_PRECONDITION on backends without them).
  absl::StatusOr<v1::RegisterEventResponse> RegisterEvent(std::string_view session_id,
                                                          const v1::RegisterEventRequest& request);
  absl::StatusOr<v1::UnregisterEventResponse> UnregisterEvent(
      std::string_view session_id, const v1::UnregisterEventRequest& request);
  absl::StatusOr<v1::GetCompletionEventResponse> GetCompletionEvent(
      std::string_view session_id, const v1::GetCompletionEventRequest& request);

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
