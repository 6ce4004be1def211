#include "server/core/host_budget.h"

#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/core/pool.h"

namespace attnd::server {

HostCharge& HostCharge::operator=(HostCharge&& other) noexcept {
  if (this != &other) {
    Release();
    daemon_ = std::move(other.daemon_);
    session_ = std::move(other.session_);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void HostCharge::Release() {
  if (bytes_ == 0) return;
  const auto bytes = static_cast<int64_t>(bytes_);
  if (daemon_ != nullptr) daemon_->fetch_sub(bytes);
  if (session_ != nullptr) session_->host_bytes.fetch_sub(bytes);
  bytes_ = 0;
}

void HostCharge::Absorb(HostCharge other) {
  if (other.bytes_ == 0) return;
  if (bytes_ == 0) {
    *this = std::move(other);
    return;
  }
  // Same counters (the caller's contract): the bytes move over, nothing is re-counted.
  bytes_ += std::exchange(other.bytes_, 0);
}

void HostCharge::ReleaseAbove(uint64_t bytes) {
  if (bytes_ <= bytes) return;
  const auto excess = static_cast<int64_t>(bytes_ - bytes);
  if (daemon_ != nullptr) daemon_->fetch_sub(excess);
  if (session_ != nullptr) session_->host_bytes.fetch_sub(excess);
  bytes_ = bytes;
}

absl::StatusOr<HostCharge> HostBudget::Charge(std::shared_ptr<SessionUsage> session, uint64_t bytes,
                                              absl::string_view what) {
  HostCharge charge;
  if (bytes == 0) return charge;
  if (bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max() / 2)) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, " would take ", bytes, " bytes of host memory"));
  }
  const auto n = static_cast<int64_t>(bytes);
  if (session != nullptr &&
      !TryReserve(session->host_bytes, n, static_cast<int64_t>(max_session_host_bytes_))) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "quota: ", what, " needs ", bytes, " bytes of host memory and this session uses ",
        session->host_bytes.load(), " (limit ", max_session_host_bytes_,
        ", --max_session_host_bytes); delete plans or pools it no longer uses"));
  }
  if (!TryReserve(*used_, n, static_cast<int64_t>(max_host_bytes_))) {
    if (session != nullptr) session->host_bytes.fetch_sub(n);
    return absl::ResourceExhaustedError(absl::StrCat(
        "quota: ", what, " needs ", bytes, " bytes of host memory and the daemon uses ",
        used_->load(), " for its clients (limit ", max_host_bytes_,
        ", --max_host_bytes); try again when other sessions release some"));
  }
  charge.daemon_ = used_;
  charge.session_ = std::move(session);
  charge.bytes_ = bytes;
  return charge;
}

}  // namespace attnd::server
