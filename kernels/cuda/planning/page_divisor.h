// The integer constants the kernels use to turn a kv position into (page, row) without a
// division (host only, no CUDA; the device side is PageOfToken in blocks/paged_kv.cuh).
#pragma once

#include <cstdint>

namespace attnd::kernels::cuda::internal {

// t / page_size as (umulhi(t, m) + t) >> s (Granlund-Montgomery, round-up variant): three
// integer instructions and no branch on the device, exact for 0 <= t < 2^31 and any
// page_size >= 1 (PageOfToken in blocks/paged_kv.cuh).
struct PageDivisor {
  uint32_t m = 1;
  int32_t s = 0;
};
PageDivisor MakePageDivisor(int32_t page_size);
// The host mirror of the device division (tests check it against t / page_size).
inline int32_t DividePage(int32_t t, PageDivisor div) {
  const uint64_t u = static_cast<uint32_t>(t);
  const uint64_t hi = (u * div.m) >> 32;  // umulhi
  return static_cast<int32_t>(static_cast<uint32_t>(hi + u) >> div.s);
}
// log2(page_size) when page_size is a power of two, else -1 (the prefill kernel's shift path).
int32_t PageShift(int32_t page_size);

}  // namespace attnd::kernels::cuda::internal
