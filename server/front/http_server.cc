#include "server/front/http_server.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <future>
#include <shared_mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "server/front/listen_address.h"

namespace attnd::server::front {

struct HttpServer::Impl {
  httplib::Server server;
  HttpHandlers handlers;
  int port = 0;
  std::thread thread;
  std::future<void> thread_done;
  std::atomic<bool> stopped{false};
  // Handlers run under a shared lock and check `handlers_stopped`: Stop() takes the lock
  // exclusively, so after it no handler reaches what HttpHandlers point to.
  std::shared_mutex handlers_mutex;
  bool handlers_stopped = false;
};

HttpServer::HttpServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Stop(); }

int HttpServer::port() const { return impl_->port; }

void HttpServer::Stop() {
  if (impl_->stopped.exchange(true)) return;
  {
    std::unique_lock<std::shared_mutex> lock(impl_->handlers_mutex);
    impl_->handlers_stopped = true;
  }
  impl_->server.stop();
  if (!impl_->thread.joinable()) return;
  if (impl_->thread_done.wait_for(std::chrono::milliseconds(300)) == std::future_status::ready) {
    impl_->thread.join();
  } else {
    spdlog::debug("HTTP: a connection is still being served; not waiting for it");
    impl_->thread.detach();  // it holds a reference to impl_
  }
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options,
                                                              HttpHandlers handlers) {
  absl::StatusOr<HostPort> address = ParseHostPort(options.listen);
  if (!address.ok()) return address.status();

  auto impl = std::make_shared<Impl>();
  impl->handlers = std::move(handlers);
  Impl* state = impl.get();
  // Runs `handler` unless the server is stopping (then 503).
  auto guarded = [state](httplib::Response& res, auto&& handler) {
    std::shared_lock<std::shared_mutex> lock(state->handlers_mutex);
    if (state->handlers_stopped) {
      res.status = 503;
      res.set_content("stopping\n", "text/plain; charset=utf-8");
      return;
    }
    handler();
  };

  // httplib's default sets SO_REUSEPORT too, which would let a second daemon bind the same port
  // silently and split the scrapes; keep only SO_REUSEADDR (fast restart after TIME_WAIT).
  impl->server.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  impl->server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain; charset=utf-8");
  });
  impl->server.Get("/readyz", [state, guarded](const httplib::Request&, httplib::Response& res) {
    guarded(res, [&] {
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
  });
  impl->server.Get("/metrics", [state, guarded](const httplib::Request&, httplib::Response& res) {
    guarded(res, [&] {
      res.set_content(state->handlers.metrics_text ? state->handlers.metrics_text() : "",
                      "text/plain; version=0.0.4; charset=utf-8");
    });
  });

  if (address->port == 0) {
    impl->port = impl->server.bind_to_any_port(address->host);
    if (impl->port <= 0) {
      const std::string problem = TcpBindProblem(*address);
      return absl::UnavailableError(absl::StrCat("HTTP cannot listen on ", options.listen, ": ",
                                                 problem.empty() ? "bind failed" : problem));
    }
  } else {
    if (!impl->server.bind_to_port(address->host, address->port)) {
      // httplib keeps no errno: a test bind finds the reason.
      const std::string problem = TcpBindProblem(*address);
      return absl::UnavailableError(absl::StrCat("HTTP cannot listen on ", options.listen, ": ",
                                                 problem.empty() ? "bind failed" : problem));
    }
    impl->port = address->port;
  }
  auto done = std::make_shared<std::promise<void>>();
  impl->thread_done = done->get_future();
  // The thread owns a reference: Stop() may leave it finishing a connection after the
  // HttpServer is gone.
  impl->thread = std::thread([impl_ref = impl, done] {
    if (!impl_ref->server.listen_after_bind() && !impl_ref->stopped) {
      spdlog::error("HTTP server stopped unexpectedly");
    }
    done->set_value();
  });
  // httplib's stop() is a no-op until the listener runs; wait for it so Stop() cannot be lost.
  for (int i = 0; i < 2000 && !state->server.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

}  // namespace attnd::server::front
