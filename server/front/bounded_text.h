// Text from clients on its way out of the daemon (status messages, log lines) is bounded and
// cannot forge lines: every error message echoes field values, and a client choosing a 64 MiB id
// must neither get a 64 MiB status (gRPC sends it as trailing metadata and the call fails with
// RESOURCE_EXHAUSTED instead) nor write a 64 MiB log line, and a newline in a client's name must
// not start a log line of its own.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace attnd::server::front {

// `text` unchanged if it has at most `max_bytes` bytes; else its start, cut at a UTF-8 character
// boundary, followed by "… (N bytes cut)", all of it at most `max_bytes` bytes (max_bytes >= 40).
std::string CutText(std::string_view text, size_t max_bytes);

// `text` with backslash and control characters escaped, so that it fits on one line and reads
// unambiguously: \\, \n, \r, \t, and for the other control characters and DEL \xNN (kLog) or
// \u00NN (kJson, which also escapes '"': the inside of a JSON string). Other bytes (UTF-8
// included) unchanged.
enum class EscapeStyle { kLog, kJson };
std::string EscapeText(std::string_view text, EscapeStyle style);

}  // namespace attnd::server::front
