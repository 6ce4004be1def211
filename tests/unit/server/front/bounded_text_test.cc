#include "server/front/bounded_text.h"

#include <gtest/gtest.h>

#include <string>

#include "server/front/log_rate_limiter.h"

namespace attnd::server::front {
namespace {

TEST(CutTextTest, ShortTextIsUnchanged) {
  EXPECT_EQ(CutText("plan_id='p-1' not found", 1024), "plan_id='p-1' not found");
  const std::string exact(64, 'x');
  EXPECT_EQ(CutText(exact, 64), exact);
}

TEST(CutTextTest, LongTextIsCutToTheBoundSayingHowMuch) {
  const std::string id(64 << 20, 'a');
  const std::string cut = CutText("buffer_id='" + id + "' not found", 1024);
  EXPECT_LE(cut.size(), 1024u);
  EXPECT_GT(cut.size(), 1000u);
  EXPECT_EQ(cut.rfind("buffer_id='aaa", 0), 0u);
  // The suffix names the bytes that are not there.
  const size_t ellipsis = cut.find("\u2026 (");
  ASSERT_NE(ellipsis, std::string::npos);
  EXPECT_EQ(cut.substr(ellipsis),
            "\u2026 (" + std::to_string(id.size() + 22 - ellipsis) + " bytes cut)");
}

TEST(CutTextTest, NeverSplitsAUtf8Character) {
  // "é" is two bytes; wherever the bound falls, the kept part is whole characters.
  std::string text;
  for (int i = 0; i < 100; ++i) text += "\u00e9";
  for (size_t max = 40; max < 80; ++max) {
    const std::string cut = CutText(text, max);
    EXPECT_LE(cut.size(), max);
    const size_t ellipsis = cut.find("\u2026");
    ASSERT_NE(ellipsis, std::string::npos);
    EXPECT_EQ(ellipsis % 2, 0u) << max;
    EXPECT_EQ(cut.substr(0, ellipsis), text.substr(0, ellipsis));
  }
}

TEST(EscapeTextTest, OneLineUnambiguous) {
  constexpr EscapeStyle kLog = EscapeStyle::kLog;
  EXPECT_EQ(EscapeText("plain \"text\" \u00e9", kLog), "plain \"text\" \u00e9");
  EXPECT_EQ(EscapeText("a\nb\rc\td", kLog), "a\\nb\\rc\\td");
  EXPECT_EQ(EscapeText("back\\slash", kLog), "back\\\\slash");
  EXPECT_EQ(EscapeText(std::string("\x00\x1b[31m\x7f", 7), kLog), "\\x00\\x1b[31m\\x7f");
  EXPECT_EQ(EscapeText(std::string("\"\x1b\x7f", 3), EscapeStyle::kJson), "\\\"\\u001b\\u007f");
}

TEST(LogRateLimiterTest, LimitsEachKeyAndReportsWhatItDropped) {
  LogRateLimiter limiter({.lines_per_key = 3, .lines_in_total = 100, .window = absl::Seconds(1)});
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  uint64_t suppressed = 99;
  int admitted = 0;
  for (int i = 0; i < 10; ++i) admitted += limiter.Admit("Run in s-1", t0, &suppressed);
  EXPECT_EQ(admitted, 3);
  // Another key has its own budget.
  EXPECT_TRUE(limiter.Admit("Run in s-2", t0, &suppressed));
  EXPECT_EQ(suppressed, 0u);
  // The next window: admitted again, with the 7 dropped lines to report first.
  EXPECT_TRUE(limiter.Admit("Run in s-1", t0 + absl::Seconds(1), &suppressed));
  EXPECT_EQ(suppressed, 7u);
  EXPECT_TRUE(limiter.TakeUnreported(t0 + absl::Seconds(5)).empty());
}

TEST(LogRateLimiterTest, TotalLimitAndPeriodicReport) {
  LogRateLimiter limiter(
      {.lines_per_key = 5, .lines_in_total = 8, .window = absl::Seconds(1), .max_keys = 4});
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  uint64_t suppressed = 0;
  int admitted = 0;
  // Random session ids, one line each: only the total limit and the key cap hold them.
  for (int i = 0; i < 100; ++i) {
    admitted += limiter.Admit("Run in s-" + std::to_string(i), t0, &suppressed);
  }
  EXPECT_EQ(admitted, 8);
  EXPECT_TRUE(limiter.TakeUnreported(t0).empty());  // window not over yet
  auto unreported = limiter.TakeUnreported(t0 + absl::Seconds(1));
  uint64_t dropped = 0;
  for (const auto& [key, count] : unreported) dropped += count;
  EXPECT_EQ(dropped, 92u);
  EXPECT_LE(unreported.size(), 4u);
  EXPECT_TRUE(limiter.TakeUnreported(t0 + absl::Seconds(2)).empty());  // reported once
}

}  // namespace
}  // namespace attnd::server::front
