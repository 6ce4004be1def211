// libFuzzer entry point: arbitrary bytes as a SessionRequest through a Core (harness.h).
#include "tests/fuzz/harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  attnd::fuzz::RunCoreCommand(data, size);
  return 0;
}
