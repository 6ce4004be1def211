#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "absl/strings/str_cat.h"
#include "attnd/v1/attnd.pb.h"
#include "server/core/page_allocator.h"
#include "server/core/validation.h"
#include "tests/fuzz/harness.h"

namespace attnd::fuzz {
namespace {

namespace v1 = ::attnd::v1;
using server::PageAllocator;
using server::PageLedger;

// Reads the input front to back; zeros once it runs out.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t u8() { return pos_ < size_ ? data_[pos_++] : 0; }
  int32_t i32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(u8()) << (8 * i);
    return static_cast<int32_t>(v);
  }
  // Mostly small values, sometimes anything (edge cases: negative, huge).
  int32_t small(int32_t bound) {
    const uint8_t mode = u8();
    if (mode < 200) return bound > 0 ? u8() % bound : 0;
    if (mode < 230) return -static_cast<int32_t>(u8());
    return i32();
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

void Check(bool ok, const char* what, const std::string& detail = "") {
  if (!ok) FuzzCheckFailed(what, detail);
}

void CheckAllocator(const PageAllocator& allocator, const std::vector<const PageLedger*>& ledgers) {
  int64_t free_count = 0;
  for (int32_t p = 0; p < allocator.num_pages(); ++p) {
    int64_t held = 0;
    for (const PageLedger* l : ledgers) held += l->count(p);
    Check(allocator.refcount(p) == held, "refcount == sum of the ledgers",
          absl::StrCat("page ", p, ": refcount ", allocator.refcount(p), ", ledgers ", held));
    if (allocator.refcount(p) == 0) ++free_count;
  }
  Check(allocator.free_pages() == free_count, "free list == pages at refcount 0",
        absl::StrCat(allocator.free_pages(), " vs ", free_count));
  for (const PageLedger* l : ledgers) {
    for (const auto& [page, count] : l->counts()) {
      Check(count > 0 && page >= 0 && page < allocator.num_pages(), "ledger entries valid");
    }
  }
}

std::vector<int32_t> PageList(Bytes& in, int32_t num_pages) {
  std::vector<int32_t> ids(in.u8() % 6);
  for (int32_t& id : ids) id = in.small(num_pages + 2);
  return ids;
}

void CheckPlan(const v1::CreatePlanRequest& request, const server::PoolGeometry& geometry) {
  auto plan = server::ValidatePlan(request, geometry, "fuzz", 64);
  if (!plan.ok()) {
    Check(!plan.status().message().empty(), "an error has a message");
    return;
  }
  const auto& spec = plan->spec;
  const int32_t batch = request.kv_indptr_size() - 1;
  Check(batch >= 1, "accepted plan has a batch");
  std::set<int32_t> distinct;
  int64_t kv_tokens = 0;
  for (int32_t b = 0; b < batch; ++b) {
    const int32_t begin = request.kv_indptr(b), end = request.kv_indptr(b + 1);
    Check(0 <= begin && begin < end && end <= request.kv_indices_size(),
          "accepted kv_indptr is increasing and in range",
          absl::StrCat("b=", b, " [", begin, ",", end, ") of ", request.kv_indices_size()));
    for (int32_t i = begin; i < end; ++i) {
      const int32_t page = request.kv_indices(i);
      Check(page >= 0 && page < geometry.num_pages, "accepted page in range",
            absl::StrCat(page, " of ", geometry.num_pages));
      distinct.insert(page);
    }
    const int32_t last = request.kv_last_page_len(b);
    Check(last >= 1 && last <= geometry.page_size, "accepted last_page_len in 1..page_size");
    const int64_t kv_len = static_cast<int64_t>(end - begin - 1) * geometry.page_size + last;
    kv_tokens += kv_len;
    const int64_t qo_len = spec.qo_indptr[b + 1] - spec.qo_indptr[b];
    Check(qo_len >= 1 && qo_len <= kv_len, "accepted qo_len in 1..kv_len",
          absl::StrCat("qo_len ", qo_len, ", kv_len ", kv_len));
  }
  Check(plan->kv_tokens == kv_tokens, "kv_tokens is the sum of kv_len");
  Check(std::vector<int32_t>(distinct.begin(), distinct.end()) == plan->distinct_pages,
        "distinct_pages are the pages read, sorted, once");
  for (int32_t page : plan->written_pages) {
    Check(distinct.count(page) == 1, "written pages are read pages");
  }
}

}  // namespace

void RunPageTable(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  server::PoolGeometry geometry;
  geometry.num_layers = 1;
  geometry.num_kv_heads = 1;
  geometry.head_dim = 64;
  static constexpr int32_t kPageSizes[] = {1, 4, 16};
  geometry.page_size = kPageSizes[in.u8() % 3];
  geometry.num_pages = 1 + in.u8() % 48;
  geometry.page_bytes = 2ull * geometry.page_size * geometry.head_dim * 2;
  geometry.layer_bytes = geometry.page_bytes * geometry.num_pages;
  geometry.total_bytes = geometry.layer_bytes;

  PageAllocator allocator(geometry.num_pages);
  PageLedger ledgers[2];
  const std::vector<const PageLedger*> all = {&ledgers[0], &ledgers[1]};
  for (int step = 0; step < 64 && !in.empty(); ++step) {
    const uint8_t op = in.u8();
    PageLedger& mine = ledgers[op & 1];
    PageLedger& other = ledgers[(op & 1) ^ 1];
    switch ((op >> 1) % 5) {
      case 0: {  // allocate
        const int32_t count = in.small(geometry.num_pages + 2);
        const int64_t before = allocator.free_pages();
        auto pages = allocator.Allocate(count, mine, "fuzz");
        if (pages.ok()) {
          Check(static_cast<int32_t>(pages->size()) == count && count >= 1, "allocate count");
          Check(allocator.free_pages() == before - count, "allocate takes from the free list");
        } else {
          Check(allocator.free_pages() == before, "failed allocate changes nothing");
        }
        break;
      }
      case 1: {  // free (after the same checks the Core does)
        const std::vector<int32_t> ids = PageList(in, geometry.num_pages);
        if (!server::ValidatePageIds(ids, "page_ids", geometry.num_pages, "fuzz").ok()) break;
        if (!server::CheckPagesHeld(ids, "page_ids", mine, "fuzz").ok()) break;
        (void)allocator.Release(ids, mine);
        break;
      }
      case 2: {  // fork to the other holder (the requester must hold the pages)
        const std::vector<int32_t> ids = PageList(in, geometry.num_pages);
        if (!server::ValidatePageIds(ids, "page_ids", geometry.num_pages, "fuzz").ok()) break;
        if (!server::CheckPagesHeld(ids, "page_ids", mine, "fuzz").ok()) break;
        const absl::Status s = allocator.AddReferences(ids, other);
        Check(s.ok(), "fork of held pages succeeds", s.ToString());
        break;
      }
      case 3: {  // release everything of one holder (session close)
        allocator.ReleaseAll(mine);
        Check(mine.empty(), "ReleaseAll empties the ledger");
        break;
      }
      case 4: {  // a plan over arbitrary CSR arrays
        v1::CreatePlanRequest request;
        request.set_kind(in.u8() & 1 ? v1::ATTENTION_KIND_PREFILL : v1::ATTENTION_KIND_DECODE);
        request.set_num_qo_heads(1);
        const int32_t batch = in.u8() % 5;
        for (int32_t i = 0; i <= batch; ++i) request.add_kv_indptr(in.small(12));
        const int32_t n = in.u8() % 12;
        for (int32_t i = 0; i < n; ++i) request.add_kv_indices(in.small(geometry.num_pages + 2));
        const int32_t lasts = in.u8() % 6;
        for (int32_t i = 0; i < lasts; ++i) request.add_kv_last_page_len(in.small(geometry.page_size + 2));
        const int32_t qos = in.u8() % 6;
        for (int32_t i = 0; i < qos; ++i) request.add_qo_indptr(in.small(64));
        CheckPlan(request, geometry);
        break;
      }
    }
    CheckAllocator(allocator, all);
  }
  allocator.ReleaseAll(ledgers[0]);
  allocator.ReleaseAll(ledgers[1]);
  Check(allocator.free_pages() == geometry.num_pages, "every page free at the end");
}

std::vector<std::string> PageTableSeeds() {
  // Each seed: geometry bytes, then a few well-formed operations.
  std::vector<std::string> seeds;
  // page_size 4, 16 pages; allocate 3 to holder 0; fork [0] to holder 1; free [0] from 0.
  seeds.push_back(std::string("\x01\x0f" "\x00\x00\x03" "\x04\x01\x00\x00" "\x02\x01\x00\x00", 13));
  // A valid decode plan: batch 1, kv_indptr [0,2], indices [0,1], last_page_len [3].
  seeds.push_back(std::string("\x01\x0f" "\x08\x00" "\x01" "\x00\x00\x00\x02" "\x02\x00\x00\x00\x01"
                              "\x01\x00\x03" "\x00", 18));
  // A prefill plan with qo_indptr [0,5].
  seeds.push_back(std::string("\x02\x0f" "\x08\x01" "\x01" "\x00\x00\x00\x01" "\x01\x00\x02"
                              "\x01\x00\x07" "\x02\x00\x00\x00\x05", 19));
  // Release-all after allocations by both holders.
  seeds.push_back(std::string("\x00\x07" "\x00\x00\x02" "\x01\x00\x02" "\x06" "\x07", 10));
  return seeds;
}

[[noreturn]] void FuzzCheckFailed(const char* what, const std::string& detail) {
  std::fprintf(stderr, "attnd fuzz invariant broken: %s: %s\n", what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace attnd::fuzz
