// Random, unguessable identifiers for sessions, pools, plans and buffers.
#pragma once

#include <string>
#include <string_view>
#include "absl/strings/string_view.h"

namespace attnd::server {

// Returns `prefix` followed by 32 lowercase hex digits (128 random bits from a
// cryptographically seeded generator), e.g. "s-3f9c...". Thread-safe.
std::string NewRandomId(absl::string_view prefix);

// A new session id "s<serial>-<32 hex digits>": the serial (counting sessions since start)
// is the session's log tag, the random part its secret. Thread-safe.
std::string NewSessionId();

// The part of a session id that may be logged: "s17" for "s17-3f9c...". Ids are never logged
// whole; a string that is not a session id gives "s?".
std::string SessionLogTag(std::string_view session_id);

// True iff a == b; the time depends only on the lengths, not on the contents (secrets: tokens,
// grants).
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

}  // namespace attnd::server
