#include "server/front/prometheus_text.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "prometheus_text_parser.h"

namespace attnd::server::front {
namespace {

TEST(PrometheusTextTest, LabelValueEscapes) {
  EXPECT_EQ(EscapeLabelValue("plain"), "plain");
  EXPECT_EQ(EscapeLabelValue("a\"b"), "a\\\"b");
  EXPECT_EQ(EscapeLabelValue("a\\b"), "a\\\\b");
  EXPECT_EQ(EscapeLabelValue("a\nb"), "a\\nb");
  EXPECT_EQ(EscapeHelpText("x\"y\\z\n"), "x\"y\\\\z\\n");  // HELP keeps quotes
}

TEST(PrometheusTextTest, SampleValues) {
  EXPECT_EQ(FormatSampleValue(0), "0");
  EXPECT_EQ(FormatSampleValue(42), "42");
  EXPECT_EQ(FormatSampleValue(-3), "-3");
  EXPECT_EQ(FormatSampleValue(0.1), "0.1");
  EXPECT_EQ(FormatSampleValue(50e-6), "5e-05");
  EXPECT_EQ(FormatSampleValue(2.5), "2.5");
  EXPECT_EQ(FormatSampleValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatSampleValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatSampleValue(std::nan("")), "NaN");
  const double third = 1.0 / 3.0;
  EXPECT_EQ(std::strtod(FormatSampleValue(third).c_str(), nullptr), third);  // round-trips
}

TEST(PrometheusTextTest, WriterRoundTripsThroughParser) {
  PrometheusTextWriter w;
  w.Family("demo_total", "counter", "A help\nwith a newline and a \\ backslash.");
  const std::string nasty = "pool \"x\"\\y\nz";
  w.Sample("demo_total", {{"pool", nasty}, {"state", "used"}}, uint64_t{18446744073709551615ull});
  w.Sample("demo_total", {}, 1.5);
  const std::string text = w.Take();
  EXPECT_NE(text.find("# TYPE demo_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("demo_total{pool=\"pool \\\"x\\\"\\\\y\\nz\",state=\"used\"} "
                      "18446744073709551615\n"),
            std::string::npos)
      << text;

  const testing::ParsedExposition parsed = testing::ParseExposition(text);
  EXPECT_TRUE(parsed.errors.empty()) << parsed.errors.front();
  EXPECT_EQ(parsed.types.at("demo_total"), "counter");
  EXPECT_EQ(parsed.helps.at("demo_total"), "A help\nwith a newline and a \\ backslash.");
  EXPECT_EQ(parsed.Get("demo_total", {{"pool", nasty}, {"state", "used"}}),
            18446744073709551615.0);
  EXPECT_EQ(parsed.Get("demo_total"), 1.5);
}

}  // namespace
}  // namespace attnd::server::front
