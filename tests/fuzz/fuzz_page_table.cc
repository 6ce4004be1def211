// libFuzzer entry point: page-allocator programs and plan page tables (harness.h).
#include "tests/fuzz/harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  attnd::fuzz::RunPageTable(data, size);
  return 0;
}
