#include "server/core/staging.h"

#include "absl/strings/str_cat.h"

namespace attnd::server {

absl::StatusOr<char*> StagingArea::Reserve(kernels::Backend& backend, uint64_t bytes) {
  if (memory_ == nullptr || memory_->size() < bytes) {
    memory_.reset();  // free the old area first so both never coexist
    // Grow geometrically so a session whose batches slowly grow does not reallocate every step.
    const uint64_t capacity = AlignUp(bytes + bytes / 2);
    auto memory = backend.Allocate(capacity);
    if (!memory.ok()) {
      return absl::Status(memory.status().code(),
                          absl::StrCat("allocating ", capacity, " bytes of staging memory: ",
                                       memory.status().message()));
    }
    memory_ = *std::move(memory);
  }
  return static_cast<char*>(memory_->data());
}

}  // namespace attnd::server
