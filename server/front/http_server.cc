#include "server/front/http_server.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "server/front/listen_address.h"

namespace attnd::server::front {

struct HttpServer::Impl {
  httplib::Server server;
  HttpHandlers handlers;
  int port = 0;
  std::thread thread;
  std::atomic<bool> stopped{false};
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Stop(); }

int HttpServer::port() const { return impl_->port; }

void HttpServer::Stop() {
  if (impl_->stopped.exchange(true)) return;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options,
                                                              HttpHandlers handlers) {
  absl::StatusOr<HostPort> address = ParseHostPort(options.listen);
  if (!address.ok()) return address.status();

  auto impl = std::make_unique<Impl>();
  impl->handlers = std::move(handlers);
  Impl* state = impl.get();

  // httplib's default sets SO_REUSEPORT too, which would let a second daemon bind the same port
  // silently and split the scrapes; keep only SO_REUSEADDR (fast restart after TIME_WAIT).
  impl->server.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  impl->server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain; charset=utf-8");
  });
  impl->server.Get("/readyz", [state](const httplib::Request&, httplib::Response& res) {
    const Readiness readiness = state->handlers.readiness
                                    ? state->handlers.readiness()
                                    : Readiness{false, "no readiness source"};
    if (readiness.ready) {
      res.set_content("ready\n", "text/plain; charset=utf-8");
    } else {
      res.status = 503;
      res.set_content(absl::StrCat("not ready: ", readiness.reason, "\n"),
                      "text/plain; charset=utf-8");
    }
  });
  impl->server.Get("/metrics", [state](const httplib::Request&, httplib::Response& res) {
    res.set_content(state->handlers.metrics_text ? state->handlers.metrics_text() : "",
                    "text/plain; version=0.0.4; charset=utf-8");
  });

  if (address->port == 0) {
    impl->port = impl->server.bind_to_any_port(address->host);
    if (impl->port <= 0) {
      return absl::UnavailableError(
          absl::StrCat("HTTP: cannot bind any port on '", address->host, "'"));
    }
  } else {
    if (!impl->server.bind_to_port(address->host, address->port)) {
      return absl::UnavailableError(absl::StrCat("HTTP: cannot bind ", options.listen,
                                                 " (address in use or not local?)"));
    }
    impl->port = address->port;
  }
  impl->thread = std::thread([state] {
    if (!state->server.listen_after_bind() && !state->stopped) {
      spdlog::error("HTTP server stopped unexpectedly");
    }
  });
  // httplib's stop() is a no-op until the listener runs; wait for it so Stop() cannot be lost.
  for (int i = 0; i < 2000 && !state->server.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

}  // namespace attnd::server::front
