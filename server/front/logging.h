// spdlog set-up of the daemon: one stderr logger as the default logger, at --log_level, in either
// a human-readable pattern or (--log_json) one JSON object per line:
//   {"time":"2025-01-31T12:00:00.123456Z","level":"info","thread":1234,"msg":"..."}
// with the message escaped as a JSON string. Either way every message is one line, whatever it
// quotes (control characters escaped: a client's name with a newline cannot forge a line), and
// at most kMaxLogMessageBytes long (cut, saying how much was cut).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace attnd::server::front {

inline constexpr size_t kMaxLogMessageBytes = 4096;

struct LoggingOptions {
  std::string level = "info";  // trace | debug | info | warn | error
  bool json = false;
};

// INVALID_ARGUMENT for an unknown level. Safe to call again (replaces the logger).
absl::Status SetUpLogging(const LoggingOptions& options);

// `text` escaped for the inside of a JSON string (quotes, backslash, control characters).
std::string JsonEscape(std::string_view text);

}  // namespace attnd::server::front
