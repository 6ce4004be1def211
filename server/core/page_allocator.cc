#include "server/core/page_allocator.h"

#include "absl/strings/str_cat.h"

namespace attnd::server {

int64_t PageLedger::total_references() const {
  int64_t total = 0;
  for (const auto& [page, count] : counts_) total += count;
  return total;
}

PageAllocator::PageAllocator(int32_t num_pages)
    : num_pages_(num_pages), refcounts_(static_cast<size_t>(num_pages), 0) {
  free_list_.reserve(static_cast<size_t>(num_pages));
  for (int32_t p = num_pages - 1; p >= 0; --p) free_list_.push_back(p);
}

absl::StatusOr<std::vector<int32_t>> PageAllocator::Allocate(int32_t count, PageLedger& holder,
                                                             const std::string& pool_name) {
  if (count < 1) {
    return absl::InvalidArgumentError(absl::StrCat("count=", count, " must be >= 1"));
  }
  if (static_cast<int64_t>(count) > free_pages()) {
    return absl::ResourceExhaustedError(absl::StrCat("pool '", pool_name, "' has ", free_pages(),
                                                     " free pages, ", count, " requested"));
  }
  std::vector<int32_t> pages;
  pages.reserve(static_cast<size_t>(count));
  for (int32_t i = 0; i < count; ++i) {
    const int32_t page = free_list_.back();
    free_list_.pop_back();
    refcounts_[page] = 1;
    holder.counts_[page] += 1;
    pages.push_back(page);
  }
  return pages;
}

absl::Status PageAllocator::AddReferences(absl::Span<const int32_t> pages, PageLedger& holder) {
  for (size_t i = 0; i < pages.size(); ++i) {
    const int32_t page = pages[i];
    if (page < 0 || page >= num_pages_) {
      return absl::OutOfRangeError(
          absl::StrCat("page_ids[", i, "]=", page, " is outside 0..", num_pages_ - 1));
    }
    if (refcounts_[page] == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("page_ids[", i, "]=", page, ": page ", page, " is free"));
    }
  }
  for (const int32_t page : pages) {
    refcounts_[page] += 1;
    holder.counts_[page] += 1;
  }
  return absl::OkStatus();
}

absl::Status PageAllocator::Release(absl::Span<const int32_t> pages, PageLedger& holder) {
  // Count what is asked per page first, so a list that drops more references than are held
  // changes nothing.
  absl::flat_hash_map<int32_t, int32_t> wanted;
  for (size_t i = 0; i < pages.size(); ++i) {
    const int32_t page = pages[i];
    const int32_t want = ++wanted[page];
    if (want > holder.count(page)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "page_ids[", i, "]=", page, ": ", holder.count(page),
          " reference(s) held, ", want, " would be released"));
    }
  }
  for (const auto& [page, count] : wanted) {
    auto it = holder.counts_.find(page);
    it->second -= count;
    if (it->second == 0) holder.counts_.erase(it);
    for (int32_t c = 0; c < count; ++c) DropOne(page);
  }
  return absl::OkStatus();
}

void PageAllocator::ReleaseAll(PageLedger& holder) {
  for (const auto& [page, count] : holder.counts_) {
    for (int32_t c = 0; c < count; ++c) DropOne(page);
  }
  holder.counts_.clear();
}

void PageAllocator::DropOne(int32_t page) {
  if (refcounts_[page] <= 0) return;  // cannot happen while ledgers are consistent
  if (--refcounts_[page] == 0) free_list_.push_back(page);
}

}  // namespace attnd::server
