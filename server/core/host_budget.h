// Host memory the daemon spends on its clients' behalf (plan page tables, page bookkeeping of
// pools and of each session's references, the messages of the commands in flight with their
// inline tensors), charged before it is kept against two limits:
// one per session (CoreOptions::max_session_host_bytes) and one for the whole daemon
// (CoreOptions::max_host_bytes). A charge is an RAII value: the bytes return to both budgets
// when it is destroyed, whoever holds it then (a pool outlives the session that created it).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace attnd::server {

struct SessionUsage;

class HostBudget;

class HostCharge {
 public:
  HostCharge() = default;
  ~HostCharge() { Release(); }
  HostCharge(HostCharge&& other) noexcept { *this = std::move(other); }
  HostCharge& operator=(HostCharge&& other) noexcept;
  HostCharge(const HostCharge&) = delete;
  HostCharge& operator=(const HostCharge&) = delete;
  uint64_t bytes() const { return bytes_; }
  // Adds `other` (a charge of the same budget and session, or an empty one) to this charge;
  // what grows with its owner (a plan's table after an update) stays one charge.
  void Absorb(HostCharge other);
  // Returns what this charge holds above `bytes` to the budgets (no-op when it holds less).
  void ReleaseAbove(uint64_t bytes);

 private:
  friend class HostBudget;
  void Release();
  std::shared_ptr<std::atomic<int64_t>> daemon_;  // the budget's counter
  std::shared_ptr<SessionUsage> session_;         // null: charged to the daemon only
  uint64_t bytes_ = 0;
};

// The host memory of one command's messages, charged to its session and the daemon while the
// command is in flight: the request at its wire size from when it was read until the command's
// reply has been handed to gRPC, and the reply's inline outputs (o, lse, page ids) from before
// they are allocated. Owned by the front (session_stream.cc, attnd_service.cc), which keeps it
// until the reply is written; the Core fills it (State::WithSession, CheckReplyFits).
struct MessageCharges {
  HostCharge request;
  HostCharge reply;
};

class HostBudget {
 public:
  // Limits in bytes; 0 = no limit.
  HostBudget(uint64_t max_host_bytes, uint64_t max_session_host_bytes)
      : max_host_bytes_(max_host_bytes), max_session_host_bytes_(max_session_host_bytes) {}

  // Charges `bytes` for `what` (e.g. "plan page table") to the session (null: the daemon only)
  // and the daemon. RESOURCE_EXHAUSTED naming the limit and its flag when either would be
  // passed; nothing is charged then.
  absl::StatusOr<HostCharge> Charge(std::shared_ptr<SessionUsage> session, uint64_t bytes,
                                    absl::string_view what);

  uint64_t used_bytes() const { return static_cast<uint64_t>(used_->load()); }
  uint64_t max_host_bytes() const { return max_host_bytes_; }
  uint64_t max_session_host_bytes() const { return max_session_host_bytes_; }

 private:
  const uint64_t max_host_bytes_;
  const uint64_t max_session_host_bytes_;
  const std::shared_ptr<std::atomic<int64_t>> used_ = std::make_shared<std::atomic<int64_t>>(0);
};

}  // namespace attnd::server
