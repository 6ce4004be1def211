// The daemon's Prometheus metrics: a small registry written by hand (prometheus-cpp is not among
// attnd's dependencies). Request metrics are recorded on the request path with relaxed atomics
// only (no lock, no allocation); gauges are read from Core::Stats() when /metrics is scraped.
//
// Exposed families:
//   attnd_requests_total{method,code}              counter   one per finished command
//   attnd_request_duration_seconds{method}         histogram buckets 50us .. 10s
//   attnd_streams_active                           gauge     open Session streams
//   attnd_sessions, attnd_plans, attnd_buffers     gauge     from Core::Stats()
//   attnd_pool_pages{pool,state="used|free"}       gauge
//   attnd_pool_bytes{pool}                         gauge     bytes of the pool's allocation
//   attnd_pool_attached_sessions{pool}             gauge
//   attnd_pool_memory_allocated_bytes              gauge     all pools together
//   attnd_bytes_in_total, attnd_bytes_out_total    counter   tensor bytes read / written
//   attnd_backend_healthy                          gauge     1 while Core::Health() is OK
//   attnd_device_errors_total                      counter   sticky device errors seen
//   attnd_info{version,backend,device}             gauge     always 1
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/core/core.h"

namespace attnd::server::front {

// Upper bounds (seconds) of the latency histogram's buckets; +Inf is implicit.
inline constexpr std::array<double, 17> kLatencyBucketsSeconds = {
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
    50e-3, 100e-3, 250e-3, 500e-3, 1.0,  2.5,    5.0,  10.0};

// Counters of one method (a gRPC method or a Session stream command of the same name).
class MethodMetrics {
 public:
  explicit MethodMetrics(std::string method) : method_(std::move(method)) {}
  MethodMetrics(const MethodMetrics&) = delete;
  MethodMetrics& operator=(const MethodMetrics&) = delete;

  // Lock-free; safe from any thread.
  void Record(absl::StatusCode code, absl::Duration elapsed);

  const std::string& method() const { return method_; }

 private:
  friend class Metrics;
  static constexpr int kNumCodes = 17;  // canonical codes 0..16
  std::string method_;
  std::array<std::atomic<uint64_t>, kNumCodes> count_by_code_{};
  // Per-bucket (not cumulative) counts; the last entry counts samples above the last bound.
  std::array<std::atomic<uint64_t>, kLatencyBucketsSeconds.size() + 1> bucket_counts_{};
  std::atomic<uint64_t> sum_nanoseconds_{0};
};

// What /metrics shows besides the request counters: read at scrape time.
struct MetricsSnapshot {
  CoreStats stats;
  bool backend_healthy = false;
  std::string version;
  std::string backend;
  std::string device;
};

class Metrics {
 public:
  Metrics() = default;
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The counters of `method`, created on first use. The reference stays valid for the lifetime
  // of this object, so callers look it up once (at start-up) and record without a lookup.
  MethodMetrics& ForMethod(std::string_view method);

  void StreamOpened() { streams_active_.fetch_add(1, std::memory_order_relaxed); }
  void StreamClosed() { streams_active_.fetch_sub(1, std::memory_order_relaxed); }
  // A command failed on a device in a sticky error, or a health check found one (backend_health.h).
  void CountDeviceError() { device_errors_.fetch_add(1, std::memory_order_relaxed); }

  // The whole exposition, text format 0.0.4.
  std::string Render(const MetricsSnapshot& snapshot) const;

 private:
  mutable std::mutex mutex_;             // guards methods_ (the list, not the counters)
  std::deque<MethodMetrics> methods_;    // deque: references stay valid as it grows
  std::atomic<int64_t> streams_active_{0};
  std::atomic<uint64_t> device_errors_{0};
};

}  // namespace attnd::server::front
