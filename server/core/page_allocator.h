// Page bookkeeping of one pool: a free list and a reference count per page, plus the ledgers
// that record which holder (a session's client references, a session's plan pins) owns how many
// of those references.
//
// Not thread-safe: the owning Pool serialises every call under its mutex.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace attnd::server {

// The references one holder owns in one pool: page id -> count (> 0; pages at 0 are erased).
class PageLedger {
 public:
  int32_t count(int32_t page) const {
    auto it = counts_.find(page);
    return it == counts_.end() ? 0 : it->second;
  }
  bool empty() const { return counts_.empty(); }
  int64_t distinct_pages() const { return static_cast<int64_t>(counts_.size()); }
  int64_t total_references() const;
  const absl::flat_hash_map<int32_t, int32_t>& counts() const { return counts_; }

 private:
  friend class PageAllocator;
  absl::flat_hash_map<int32_t, int32_t> counts_;
};

class PageAllocator {
 public:
  // Pages 0 .. num_pages-1, all free. Lower page ids are handed out first.
  explicit PageAllocator(int32_t num_pages);

  int32_t num_pages() const { return num_pages_; }
  int64_t free_pages() const { return static_cast<int64_t>(free_list_.size()); }
  int32_t refcount(int32_t page) const { return refcounts_[page]; }

  // Takes `count` free pages (refcount 0 -> 1) for `holder`, all or nothing.
  // INVALID_ARGUMENT for count < 1; RESOURCE_EXHAUSTED
  // "pool 'x' has 3 free pages, 5 requested" when fewer are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int32_t count, PageLedger& holder,
                                                const std::string& pool_name);

  // One more reference per listed page (duplicates add one each), recorded in `holder`.
  // The pages must be in use (refcount > 0): callers check that the requester holds them.
  // FAILED_PRECONDITION for a free page, and nothing changes.
  absl::Status AddReferences(absl::Span<const int32_t> pages, PageLedger& holder);

  // Drops one reference per listed page from `holder`; a page whose count reaches 0 returns to
  // the free list. All or nothing: FAILED_PRECONDITION naming the first page the holder does
  // not hold often enough.
  absl::Status Release(absl::Span<const int32_t> pages, PageLedger& holder);

  // Drops every reference in `holder` and empties it.
  void ReleaseAll(PageLedger& holder);

 private:
  void DropOne(int32_t page);

  int32_t num_pages_;
  std::vector<int32_t> refcounts_;  // [num_pages]
  // Free page ids; popped from the back, so it is kept in descending order initially and low ids
  // are used first (easier to read in logs and tests).
  std::vector<int32_t> free_list_;
};

}  // namespace attnd::server
