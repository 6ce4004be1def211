// Page bookkeeping of one pool: a free list and a reference count per page, plus the ledgers
// that record which holder (a session's client references, a session's plan pins) owns how many
// of those references.
//
// Not thread-safe: the owning Pool serialises every call under its mutex.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace attnd::server {

// The references one holder owns in one pool: a count per page id, stored densely (indexed by
// page id, grown on demand) so that pinning and unpinning a plan's thousands of pages costs an
// array access per page instead of a hash-map operation.
class PageLedger {
 public:
  int32_t count(int32_t page) const {
    return page >= 0 && static_cast<size_t>(page) < counts_.size() ? counts_[page] : 0;
  }
  bool empty() const { return distinct_ == 0; }
  int64_t distinct_pages() const { return distinct_; }
  int64_t total_references() const { return total_; }
  // (page, count) for every page with count > 0, in ascending page order. O(largest page id).
  std::vector<std::pair<int32_t, int32_t>> counts() const;
  // Room for page ids 0 .. num_pages-1, so that adding references never allocates.
  void Reserve(int32_t num_pages) {
    if (counts_.size() < static_cast<size_t>(num_pages)) counts_.resize(static_cast<size_t>(num_pages), 0);
  }
  size_t capacity() const { return counts_.size(); }

 private:
  friend class PageAllocator;
  void Add(int32_t page) {
    if (static_cast<size_t>(page) >= counts_.size()) counts_.resize(static_cast<size_t>(page) + 1, 0);
    if (counts_[page]++ == 0) ++distinct_;
    ++total_;
  }
  std::vector<int32_t> counts_;  // [largest page id seen + 1]
  int64_t distinct_ = 0;         // pages with count > 0
  int64_t total_ = 0;            // sum of the counts
};

class PageAllocator {
 public:
  // References a page may have by default (CoreOptions::max_references_per_page).
  static constexpr int32_t kDefaultMaxReferences = 1 << 20;

  // Pages 0 .. num_pages-1, all free. Lower page ids are handed out first. A page never has
  // more than max_references references (1 .. 2^30), so counts cannot wrap.
  explicit PageAllocator(int32_t num_pages, int32_t max_references = kDefaultMaxReferences);

  int32_t num_pages() const { return num_pages_; }
  int64_t free_pages() const { return static_cast<int64_t>(free_list_.size()); }
  int32_t refcount(int32_t page) const { return refcounts_[page]; }
  int32_t max_references() const { return max_references_; }

  // Takes `count` free pages (refcount 0 -> 1) for `holder`, all or nothing.
  // INVALID_ARGUMENT for count < 1; RESOURCE_EXHAUSTED
  // "pool 'x' has 3 free pages, 5 requested" when fewer are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int32_t count, PageLedger& holder,
                                                const std::string& pool_name);

  // One more reference per listed page (duplicates add one each), recorded in `holder`.
  // The pages must be in use (refcount > 0): callers check that the requester holds them.
  // FAILED_PRECONDITION for a free page, RESOURCE_EXHAUSTED naming the page when it would pass
  // max_references; in both cases nothing changes. `field` names the list in messages.
  absl::Status AddReferences(absl::Span<const int32_t> pages, PageLedger& holder,
                             absl::string_view field = "page_ids");

  // Drops one reference per listed page from `holder`; a page whose count reaches 0 returns to
  // the free list. All or nothing: FAILED_PRECONDITION naming the first page the holder does
  // not hold often enough.
  absl::Status Release(absl::Span<const int32_t> pages, PageLedger& holder);

  // Drops every reference in `holder` and empties it.
  void ReleaseAll(PageLedger& holder);

 private:
  void DropOne(int32_t page);

  int32_t num_pages_;
  int32_t max_references_;
  std::vector<int32_t> refcounts_;  // [num_pages], each in 0..max_references_
  // Free page ids; popped from the back, so it is kept in descending order initially and low ids
  // are used first (easier to read in logs and tests).
  std::vector<int32_t> free_list_;
};

}  // namespace attnd::server
