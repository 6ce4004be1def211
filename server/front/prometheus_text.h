// Writer for the Prometheus text exposition format, version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/). Written by hand because
// prometheus-cpp is not among attnd's dependencies; the format is small:
//   # HELP <name> <escaped help>
//   # TYPE <name> counter|gauge|histogram
//   <name>{<label>="<escaped value>",...} <value>
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace attnd::server::front {

using PrometheusLabels = std::vector<std::pair<std::string_view, std::string_view>>;

// Label values escape backslash, double quote and line feed as \\, \" and \n.
std::string EscapeLabelValue(std::string_view value);
// HELP text escapes backslash and line feed only.
std::string EscapeHelpText(std::string_view help);
// A sample value: integers without exponent, otherwise shortest round-trip form; +Inf, -Inf, NaN.
std::string FormatSampleValue(double value);

class PrometheusTextWriter {
 public:
  // Starts a metric family: its HELP and TYPE lines. Each family is written once, before its
  // samples.
  void Family(std::string_view name, std::string_view type, std::string_view help);
  void Sample(std::string_view name, const PrometheusLabels& labels, double value);
  // Exact for counters beyond 2^53.
  void Sample(std::string_view name, const PrometheusLabels& labels, uint64_t value);

  const std::string& text() const { return text_; }
  std::string Take() { return std::move(text_); }

 private:
  void AppendNameAndLabels(std::string_view name, const PrometheusLabels& labels);
  std::string text_;
};

}  // namespace attnd::server::front
