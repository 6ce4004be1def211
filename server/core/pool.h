// A KV-cache pool: one backend allocation holding num_layers layers of
// [num_pages][2][page_size][num_kv_heads][head_dim] (NHD), its page allocator, and the page
// ledgers of the sessions attached to it.
//
// Locking: `mu` guards the allocator, the attachments and `closed`. Geometry, id, name and the
// memory are immutable after Create and may be read without it. Shared by the registry, the
// attached sessions and their plans (std::shared_ptr), so an in-flight run keeps the memory alive.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "attnd/kernels/backend.h"
#include "attnd/v1/attnd.pb.h"
#include "server/core/host_budget.h"
#include "server/core/page_allocator.h"
#include "server/core/validation.h"

namespace attnd::server {

// What one session uses over all its pools, counted where it is taken so that quotas can be
// checked (and reserved) without the session's lock: shared by the session and its attachments.
struct SessionUsage {
  std::atomic<int64_t> page_references{0};  // client references held (max_pages_per_session)
  std::atomic<int64_t> host_bytes{0};       // host memory charged (HostBudget)
};

// Adds `n` to `counter` if the result stays <= limit (limit <= 0: no limit). Lock-free, so
// concurrent reservations never pass the limit together.
bool TryReserve(std::atomic<int64_t>& counter, int64_t n, int64_t limit);

// What one attached session holds in a pool.
struct PoolAttachment {
  PageLedger held;    // references the client asked for (AllocatePages, ForkPages)
  PageLedger pinned;  // references the session's plans hold (one per distinct page per plan)
  std::shared_ptr<SessionUsage> usage;  // the session's counters (never null)
  std::string fork_grant;               // this session's grant for the pool (PoolInfo.fork_grant)
  // The two ledgers' memory (sized to the pool's pages on first use, see Pool::SizeLedgers).
  HostCharge ledger_charge;
};

class Pool {
 public:
  // Allocates the pool's memory (zeroed when the backend memory is host-accessible).
  // `creator_principal`: the principal of the creating session (may attach by name).
  // `bookkeeping`: the host memory of the allocator (BookkeepingBytes), already charged.
  static absl::StatusOr<std::shared_ptr<Pool>> Create(
      std::string id, std::string name, const PoolGeometry& geometry, kernels::Backend& backend,
      std::string creator_principal, int32_t max_references_per_page, HostCharge bookkeeping);
  // Host memory of a pool's page bookkeeping (reference counts and free list).
  static uint64_t BookkeepingBytes(const PoolGeometry& geometry);

  const std::string& id() const { return id_; }
  const std::string& name() const { return name_; }
  const PoolGeometry& geometry() const { return geometry_; }
  uint64_t total_bytes() const { return geometry_.total_bytes; }
  const std::string& attach_token() const { return attach_token_; }

  // Whether a session of `principal` showing `attach_token` may attach: the creator's principal
  // (when known) attaches by name, anyone else needs the pool's token (compared in constant
  // time).
  bool MayAttach(const std::string& principal, absl::string_view attach_token) const;

  // Attaches `session_id` (a no-op when attached): an empty attachment with a new fork grant.
  PoolAttachment& Attach(const std::string& session_id, std::shared_ptr<SessionUsage> usage)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // The attachment whose fork grant is `grant`, or null.
  PoolAttachment* FindByGrant(absl::string_view grant, std::string* session_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Gives the attachment's ledgers room for every page of the pool (so no later reference makes
  // them grow), charged to its session's host budget the first time. RESOURCE_EXHAUSTED from
  // the budget.
  absl::Status SizeLedgers(PoolAttachment& attachment, HostBudget& budget)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Releases every reference the session holds here and removes its attachment and grant.
  void Detach(const std::string& session_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // The view of one layer (data, dtype, geometry, NHD strides); page-table fields are unset.
  kernels::PagedKV LayerView(int32_t layer) const;

  // Zeroes the listed pages in every layer, in `stream`'s order, so a newly allocated page never
  // shows the K/V of its previous owner (another session, or a deleted pool whose memory this
  // pool reuses). Runs of consecutive page ids are cleared with one call per layer. The caller
  // must own the pages exclusively (just allocated) and not hold `mu`.
  absl::Status ClearPages(absl::Span<const int32_t> pages, kernels::Backend& backend,
                          kernels::Stream* stream) const;

  // The wire description: geometry, byte strides, free pages, attached sessions, IPC handle,
  // attach token, and the fork grant of `session_id` (when it is attached).
  v1::PoolInfo Info(const std::string& session_id) const ABSL_LOCKS_EXCLUDED(mu);

  mutable absl::Mutex mu;
  PageAllocator allocator ABSL_GUARDED_BY(mu);
  // session id -> what it holds here; present exactly while the session is attached.
  absl::flat_hash_map<std::string, PoolAttachment> attachments ABSL_GUARDED_BY(mu);
  // fork grant -> session id, for every attachment.
  absl::flat_hash_map<std::string, std::string> grants ABSL_GUARDED_BY(mu);
  // Set when the last session detached and the pool left the registry; no one may attach.
  bool closed ABSL_GUARDED_BY(mu) = false;

 private:
  Pool(std::string id, std::string name, const PoolGeometry& geometry,
       std::unique_ptr<kernels::BackendMemory> memory, int32_t device,
       std::string creator_principal, int32_t max_references_per_page, HostCharge bookkeeping);

  const std::string id_;
  const std::string name_;
  const std::string creator_principal_;
  const std::string attach_token_;
  const PoolGeometry geometry_;
  const std::unique_ptr<kernels::BackendMemory> memory_;
  // FP8 pools with scales: [K or V][num_layers][num_kv_heads] float32 (geometry_'s), or null.
  std::unique_ptr<kernels::BackendMemory> scales_;
  const int32_t device_;
  const HostCharge bookkeeping_;
};

}  // namespace attnd::server
