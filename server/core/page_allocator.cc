#include "server/core/page_allocator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace attnd::server {

std::vector<std::pair<int32_t, int32_t>> PageLedger::counts() const {
  std::vector<std::pair<int32_t, int32_t>> out;
  out.reserve(static_cast<size_t>(distinct_));
  for (size_t page = 0; page < counts_.size(); ++page) {
    if (counts_[page] > 0) out.emplace_back(static_cast<int32_t>(page), counts_[page]);
  }
  return out;
}

PageAllocator::PageAllocator(int32_t num_pages, int32_t max_references)
    : num_pages_(num_pages),
      max_references_(std::clamp<int32_t>(max_references, 1, 1 << 30)),
      refcounts_(static_cast<size_t>(num_pages), 0) {
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
    holder.Add(page);
    pages.push_back(page);
  }
  return pages;
}

absl::Status PageAllocator::AddReferences(absl::Span<const int32_t> pages, PageLedger& holder,
                                          absl::string_view field) {
  // Counts go up one by one, each checked against the limit before it moves (so nothing can
  // wrap, whatever the request repeats); a refused page takes back the ones added so far.
  auto undo = [&](size_t added) {
    for (size_t j = 0; j < added; ++j) refcounts_[pages[j]] -= 1;
  };
  for (size_t i = 0; i < pages.size(); ++i) {
    const int32_t page = pages[i];
    if (page < 0 || page >= num_pages_) {
      undo(i);
      return absl::OutOfRangeError(
          absl::StrCat(field, "[", i, "]=", page, " is outside 0..", num_pages_ - 1));
    }
    if (refcounts_[page] == 0) {
      undo(i);
      return absl::FailedPreconditionError(
          absl::StrCat(field, "[", i, "]=", page, ": page ", page, " is free"));
    }
    if (refcounts_[page] >= max_references_) {
      undo(i);
      return absl::ResourceExhaustedError(absl::StrCat(
          field, "[", i, "]=", page, ": page ", page, " would have more than ", max_references_,
          " references (the limit per page)"));
    }
    refcounts_[page] += 1;
  }
  for (const int32_t page : pages) holder.Add(page);
  return absl::OkStatus();
}

absl::Status PageAllocator::Release(absl::Span<const int32_t> pages, PageLedger& holder) {
  // Takes the references out of the ledger one by one; a page the holder does not hold often
  // enough puts back the ones taken so far, so a failed call changes nothing.
  int64_t emptied = 0;  // pages whose count reached 0
  for (size_t i = 0; i < pages.size(); ++i) {
    const int32_t page = pages[i];
    if (holder.count(page) <= 0) {
      for (size_t j = 0; j < i; ++j) holder.counts_[pages[j]] += 1;
      int64_t want = 0;
      for (size_t j = 0; j <= i; ++j) want += pages[j] == page ? 1 : 0;
      return absl::FailedPreconditionError(absl::StrCat(
          "page_ids[", i, "]=", page, ": ", holder.count(page), " reference(s) held, ", want,
          " would be released"));
    }
    if (--holder.counts_[page] == 0) ++emptied;
  }
  holder.distinct_ -= emptied;
  holder.total_ -= static_cast<int64_t>(pages.size());
  for (const int32_t page : pages) DropOne(page);
  return absl::OkStatus();
}

void PageAllocator::ReleaseAll(PageLedger& holder) {
  for (size_t page = 0; page < holder.counts_.size(); ++page) {
    for (int32_t c = 0; c < holder.counts_[page]; ++c) DropOne(static_cast<int32_t>(page));
  }
  std::fill(holder.counts_.begin(), holder.counts_.end(), 0);
  holder.distinct_ = 0;
  holder.total_ = 0;
}

void PageAllocator::DropOne(int32_t page) {
  if (refcounts_[page] <= 0) return;  // cannot happen while ledgers are consistent
  if (--refcounts_[page] == 0) free_list_.push_back(page);
}

}  // namespace attnd::server
