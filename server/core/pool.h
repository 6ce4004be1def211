// A KV-cache pool: one backend allocation holding num_layers layers of
// [num_pages][2][page_size][num_kv_heads][head_dim] (NHD), its page allocator, and the page
// ledgers of the sessions attached to it.
//
// Locking: `mu` guards the allocator, the attachments and `closed`. Geometry, id, name and the
// memory are immutable after Create and may be read without it. Shared by the registry, the
// attached sessions and their plans (std::shared_ptr), so an in-flight run keeps the memory alive.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "attnd/kernels/backend.h"
#include "attnd/v1/attnd.pb.h"
#include "server/core/page_allocator.h"
#include "server/core/validation.h"

namespace attnd::server {

// What one attached session holds in a pool.
struct PoolAttachment {
  PageLedger held;    // references the client asked for (AllocatePages, ForkPages)
  PageLedger pinned;  // references the session's plans hold (one per distinct page per plan)
};

class Pool {
 public:
  // Allocates the pool's memory (zeroed when the backend memory is host-accessible).
  static absl::StatusOr<std::shared_ptr<Pool>> Create(std::string id, std::string name,
                                                      const PoolGeometry& geometry,
                                                      kernels::Backend& backend);

  const std::string& id() const { return id_; }
  const std::string& name() const { return name_; }
  const PoolGeometry& geometry() const { return geometry_; }
  uint64_t total_bytes() const { return geometry_.total_bytes; }

  // The view of one layer (data, dtype, geometry, NHD strides); page-table fields are unset.
  kernels::PagedKV LayerView(int32_t layer) const;

  // Zeroes the listed pages in every layer, in `stream`'s order, so a newly allocated page never
  // shows the K/V of its previous owner (another session, or a deleted pool whose memory this
  // pool reuses). Runs of consecutive page ids are cleared with one call per layer. The caller
  // must own the pages exclusively (just allocated) and not hold `mu`.
  absl::Status ClearPages(absl::Span<const int32_t> pages, kernels::Backend& backend,
                          kernels::Stream* stream) const;

  // The wire description: geometry, byte strides, free pages, attached sessions, IPC handle.
  v1::PoolInfo Info() const ABSL_LOCKS_EXCLUDED(mu);

  mutable absl::Mutex mu;
  PageAllocator allocator ABSL_GUARDED_BY(mu);
  // session id -> what it holds here; present exactly while the session is attached.
  absl::flat_hash_map<std::string, PoolAttachment> attachments ABSL_GUARDED_BY(mu);
  // Set when the last session detached and the pool left the registry; no one may attach.
  bool closed ABSL_GUARDED_BY(mu) = false;

 private:
  Pool(std::string id, std::string name, const PoolGeometry& geometry,
       std::unique_ptr<kernels::BackendMemory> memory, int32_t device);

  const std::string id_;
  const std::string name_;
  const PoolGeometry geometry_;
  const std::unique_ptr<kernels::BackendMemory> memory_;
  const int32_t device_;
};

}  // namespace attnd::server
