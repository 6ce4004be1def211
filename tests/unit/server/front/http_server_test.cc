#include "server/front/http_server.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "prometheus_text_parser.h"

namespace attnd::server::front {
namespace {

TEST(HttpServerTest, HealthReadyAndMetrics) {
  std::atomic<bool> ready{true};
  std::atomic<int> scrapes{0};
  HttpHandlers handlers;
  handlers.readiness = [&ready] {
    return ready ? Readiness{true, ""} : Readiness{false, "backend not healthy: INTERNAL: boom"};
  };
  handlers.metrics_text = [&scrapes] {
    ++scrapes;
    return std::string("# TYPE x gauge\nx ") + std::to_string(scrapes.load()) + "\n";
  };
  auto server = HttpServer::Start(HttpServerOptions{"127.0.0.1:0"}, handlers);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);

  httplib::Client client("127.0.0.1", (*server)->port());
  auto healthz = client.Get("/healthz");
  ASSERT_TRUE(healthz);
  EXPECT_EQ(healthz->status, 200);
  EXPECT_EQ(healthz->body, "ok\n");

  auto readyz = client.Get("/readyz");
  ASSERT_TRUE(readyz);
  EXPECT_EQ(readyz->status, 200);
  ready = false;
  readyz = client.Get("/readyz");
  ASSERT_TRUE(readyz);
  EXPECT_EQ(readyz->status, 503);
  EXPECT_NE(readyz->body.find("backend not healthy: INTERNAL: boom"), std::string::npos);
  // Liveness does not depend on readiness.
  EXPECT_EQ(client.Get("/healthz")->status, 200);

  auto metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_EQ(metrics->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(testing::ParseExposition(metrics->body).Get("x"), 1);
  EXPECT_EQ(testing::ParseExposition(client.Get("/metrics")->body).Get("x"), 2);

  EXPECT_EQ(client.Get("/nope")->status, 404);

  (*server)->Stop();
  EXPECT_FALSE(client.Get("/healthz"));  // stopped: connection refused
}

TEST(HttpServerTest, PortInUseFailsAtStart) {
  auto first = HttpServer::Start(HttpServerOptions{"127.0.0.1:0"}, HttpHandlers{});
  ASSERT_TRUE(first.ok());
  auto second = HttpServer::Start(
      HttpServerOptions{"127.0.0.1:" + std::to_string((*first)->port())}, HttpHandlers{});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  // The reason, found by a test bind (httplib keeps no errno).
  EXPECT_NE(second.status().message().find(
                absl::StrCat("port ", (*first)->port(), " of 127.0.0.1 is in use")),
            std::string::npos)
      << second.status();
  auto bad = HttpServer::Start(HttpServerOptions{"no-port"}, HttpHandlers{});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attnd::server::front
