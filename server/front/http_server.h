// The daemon's HTTP endpoints (cpp-httplib), on --http_listen:
//   GET /healthz  200 "ok" while the process lives (liveness)
//   GET /readyz   200 "ready" while serving with a healthy backend, else 503 and the reason
//   GET /metrics  Prometheus text exposition format 0.0.4
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/front/serving_state.h"

namespace attnd::server::front {

struct HttpServerOptions {
  std::string listen = "127.0.0.1:9401";  // HOST:PORT; port 0 picks a free port (tests)
};

struct HttpHandlers {
  std::function<Readiness()> readiness;
  std::function<std::string()> metrics_text;
};

class HttpServer {
 public:
  // Binds synchronously (so a bad address or a taken port fails here, UNAVAILABLE), then serves
  // on its own thread.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options,
                                                           HttpHandlers handlers);
  ~HttpServer();  // Stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;  // the bound port
  // Stops listening; from its return on no handler runs. Bounded: httplib's threads finish the
  // connection they serve first (a scraper's idle keep-alive connection, a client sending half a
  // request: up to its 5 s timeouts); they are waited for 300 ms at most and then left to end on
  // their own (they keep what they use alive). Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit HttpServer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace attnd::server::front
