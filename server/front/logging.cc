#include "server/front/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "server/front/bounded_text.h"

namespace attnd::server::front {
namespace {

// A pattern flag writing the log message cut to kMaxLogMessageBytes and escaped (spdlog's %v
// writes it raw).
template <EscapeStyle kStyle>
class BoundedMessageFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const std::string escaped = EscapeText(
        CutText(std::string_view(msg.payload.data(), msg.payload.size()), kMaxLogMessageBytes),
        kStyle);
    dest.append(escaped.data(), escaped.data() + escaped.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<BoundedMessageFlag>();
  }
};

}  // namespace

std::string JsonEscape(std::string_view text) { return EscapeText(text, EscapeStyle::kJson); }

absl::Status SetUpLogging(const LoggingOptions& options) {
  const spdlog::level::level_enum level = spdlog::level::from_str(options.level);
  // from_str maps unknown names to "off"; only the five documented levels are accepted.
  if (level == spdlog::level::off || level == spdlog::level::critical) {
    return absl::InvalidArgumentError(absl::StrCat(
        "log level '", options.level, "' is not one of trace, debug, info, warn, error"));
  }
  auto logger =
      std::make_shared<spdlog::logger>("attnd", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_level(level);
  auto formatter = std::make_unique<spdlog::pattern_formatter>(
      options.json ? spdlog::pattern_time_type::utc : spdlog::pattern_time_type::local,
      std::string("\n"));
  if (options.json) {
    formatter->add_flag<BoundedMessageFlag<EscapeStyle::kJson>>('*').set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","thread":%t,"msg":"%*"})");
  } else {
    formatter->add_flag<BoundedMessageFlag<EscapeStyle::kLog>>('*').set_pattern(
        "[%Y-%m-%d %H:%M:%S.%f] [%l] [%t] %*");
  }
  logger->set_formatter(std::move(formatter));
  // Errors are flushed at once; the rest as the sink buffers (stderr is unbuffered anyway).
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(std::move(logger));
  return absl::OkStatus();
}

}  // namespace attnd::server::front
