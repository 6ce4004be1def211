#include "server/front/bounded_text.h"

#include <cstdio>

#include "absl/strings/str_cat.h"

namespace attnd::server::front {

std::string CutText(std::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  // The suffix for the largest possible count; the real one is never longer.
  const size_t suffix_room = absl::StrCat("\u2026 (", text.size(), " bytes cut)").size();
  size_t keep = max_bytes > suffix_room ? max_bytes - suffix_room : 0;
  // Not inside a multi-byte character: back up over continuation bytes (10xxxxxx).
  while (keep > 0 && (static_cast<unsigned char>(text[keep]) & 0xC0) == 0x80) --keep;
  return absl::StrCat(absl::string_view(text.data(), keep), "\u2026 (", text.size() - keep,
                      " bytes cut)");
}

std::string EscapeText(std::string_view text, EscapeStyle style) {
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '"': out += style == EscapeStyle::kJson ? "\\\"" : "\""; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          if (style == EscapeStyle::kJson) {
            std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          } else {
            std::snprintf(buf, sizeof(buf), "\\x%02x", c);
          }
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  return out;
}

}  // namespace attnd::server::front
