// Random, unguessable identifiers for sessions, pools, plans and buffers.
#pragma once

#include <string>
#include "absl/strings/string_view.h"

namespace attnd::server {

// Returns `prefix` followed by 32 lowercase hex digits (128 random bits from a
// cryptographically seeded generator), e.g. "s-3f9c...". Thread-safe.
std::string NewRandomId(absl::string_view prefix);

}  // namespace attnd::server
