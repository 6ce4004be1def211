#include "server/front/prometheus_text.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace attnd::server::front {

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string EscapeHelpText(std::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (char c : help) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string FormatSampleValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // Integral values below 2^53 are exact in a double: print them as integers.
  if (value == std::floor(value) && std::fabs(value) < 9007199254740992.0) {
    return absl::StrCat(static_cast<int64_t>(value));
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", value);
  // Prefer the shortest representation that round-trips (e.g. 0.1, not 0.10000000000000001).
  for (int precision = 6; precision < 17; ++precision) {
    char shorter[32];
    std::snprintf(shorter, sizeof(shorter), "%.*g", precision, value);
    if (std::strtod(shorter, nullptr) == value) return shorter;
  }
  return buf;
}

void PrometheusTextWriter::Family(std::string_view name, std::string_view type,
                                  std::string_view help) {
  text_.append("# HELP ").append(name).append(" ").append(EscapeHelpText(help)).append("\n");
  text_.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void PrometheusTextWriter::AppendNameAndLabels(std::string_view name,
                                               const PrometheusLabels& labels) {
  text_.append(name);
  if (labels.empty()) return;
  text_ += '{';
  bool first = true;
  for (const auto& [key, value] : labels) {
    if (!first) text_ += ',';
    first = false;
    text_.append(key).append("=\"").append(EscapeLabelValue(value)).append("\"");
  }
  text_ += '}';
}

void PrometheusTextWriter::Sample(std::string_view name, const PrometheusLabels& labels,
                                  double value) {
  AppendNameAndLabels(name, labels);
  text_.append(" ").append(FormatSampleValue(value)).append("\n");
}

void PrometheusTextWriter::Sample(std::string_view name, const PrometheusLabels& labels,
                                  uint64_t value) {
  AppendNameAndLabels(name, labels);
  text_.append(" ").append(std::to_string(value)).append("\n");
}

}  // namespace attnd::server::front
