#include "server/front/metrics.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <unordered_set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/front/prometheus_text.h"
#include "server/front/status_convert.h"

namespace attnd::server::front {

void MethodMetrics::Record(absl::StatusCode code, absl::Duration elapsed) {
  int code_index = static_cast<int>(code);
  if (code_index < 0 || code_index >= kNumCodes)
    code_index = static_cast<int>(absl::StatusCode::kUnknown);
  count_by_code_[code_index].fetch_add(1, std::memory_order_relaxed);

  const double seconds = absl::ToDoubleSeconds(elapsed);
  size_t bucket = 0;
  while (bucket < kLatencyBucketsSeconds.size() && seconds > kLatencyBucketsSeconds[bucket]) {
    ++bucket;
  }
  bucket_counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  const int64_t ns = absl::ToInt64Nanoseconds(elapsed);
  sum_nanoseconds_.fetch_add(ns > 0 ? static_cast<uint64_t>(ns) : 0, std::memory_order_relaxed);
}

MethodMetrics& Metrics::ForMethod(std::string_view method) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (MethodMetrics& m : methods_) {
    if (m.method() == method) return m;
  }
  return methods_.emplace_back(std::string(method));
}

std::vector<std::pair<int64_t, const PoolStats*>> Metrics::NumberPools(
    const std::vector<PoolStats>& pools) const {
  std::vector<std::pair<int64_t, const PoolStats*>> numbered;
  std::unordered_set<std::string> present;
  std::lock_guard<std::mutex> lock(pool_numbers_mutex_);
  for (const PoolStats& pool : pools) {
    auto [it, added] = pool_numbers_.try_emplace(pool.pool_id, next_pool_number_);
    if (added) {
      ++next_pool_number_;
      spdlog::info("metrics: pool '{}' ({}) is pool=\"{}\" in /metrics", pool.name, pool.pool_id,
                   it->second);
    }
    numbered.emplace_back(it->second, &pool);
    present.insert(pool.pool_id);
  }
  std::erase_if(pool_numbers_, [&](const auto& entry) { return !present.contains(entry.first); });
  std::sort(numbered.begin(), numbered.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return numbered;
}

std::string Metrics::Render(const MetricsSnapshot& snapshot) const {
  PrometheusTextWriter w;

  std::vector<const MethodMetrics*> methods;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const MethodMetrics& m : methods_) methods.push_back(&m);
  }
  std::sort(methods.begin(), methods.end(), [](const MethodMetrics* a, const MethodMetrics* b) {
    return a->method() < b->method();
  });

  w.Family("attnd_requests_total", "counter",
           "Commands finished, by method (gRPC method or Session stream command) and status code.");
  for (const MethodMetrics* m : methods) {
    for (int code = 0; code < MethodMetrics::kNumCodes; ++code) {
      const uint64_t n = m->count_by_code_[code].load(std::memory_order_relaxed);
      if (n == 0) continue;  // a label set appears once it has been observed
      w.Sample(
          "attnd_requests_total",
          {{"method", m->method()}, {"code", StatusCodeName(static_cast<absl::StatusCode>(code))}},
          n);
    }
  }

  w.Family("attnd_request_duration_seconds", "histogram",
           "Time from receiving a command to having its answer, by method.");
  for (const MethodMetrics* m : methods) {
    uint64_t cumulative = 0;
    for (size_t b = 0; b < kLatencyBucketsSeconds.size(); ++b) {
      cumulative += m->bucket_counts_[b].load(std::memory_order_relaxed);
      const std::string le = FormatSampleValue(kLatencyBucketsSeconds[b]);
      w.Sample("attnd_request_duration_seconds_bucket", {{"method", m->method()}, {"le", le}},
               cumulative);
    }
    cumulative += m->bucket_counts_.back().load(std::memory_order_relaxed);
    w.Sample("attnd_request_duration_seconds_bucket", {{"method", m->method()}, {"le", "+Inf"}},
             cumulative);
    const double sum_seconds =
        static_cast<double>(m->sum_nanoseconds_.load(std::memory_order_relaxed)) * 1e-9;
    w.Sample("attnd_request_duration_seconds_sum", {{"method", m->method()}}, sum_seconds);
    // _count equals the +Inf bucket by construction (both summed from the same loads).
    w.Sample("attnd_request_duration_seconds_count", {{"method", m->method()}}, cumulative);
  }

  w.Family("attnd_streams_active", "gauge", "Open Session streams.");
  w.Sample("attnd_streams_active", {},
           static_cast<double>(streams_active_.load(std::memory_order_relaxed)));

  const CoreStats& s = snapshot.stats;
  w.Family("attnd_sessions", "gauge", "Open sessions (stream-bound and leased).");
  w.Sample("attnd_sessions", {}, static_cast<double>(s.sessions));
  w.Family("attnd_plans", "gauge", "Plans alive in all sessions.");
  w.Sample("attnd_plans", {}, static_cast<double>(s.plans));
  w.Family("attnd_buffers", "gauge", "Registered client buffers in all sessions.");
  w.Sample("attnd_buffers", {}, static_cast<double>(s.buffers));

  const std::vector<std::pair<int64_t, const PoolStats*>> pools = NumberPools(s.pools);
  w.Family("attnd_pool_pages", "gauge",
           "KV-cache pages per pool (pool: its number), used or free.");
  for (const auto& [number, p] : pools) {
    const std::string pool = absl::StrCat(number);
    w.Sample("attnd_pool_pages", {{"pool", pool}, {"state", "used"}},
             static_cast<double>(p->num_pages - p->free_pages));
    w.Sample("attnd_pool_pages", {{"pool", pool}, {"state", "free"}},
             static_cast<double>(p->free_pages));
  }
  w.Family("attnd_pool_bytes", "gauge", "Bytes of each pool's allocation.");
  for (const auto& [number, p] : pools) {
    w.Sample("attnd_pool_bytes", {{"pool", absl::StrCat(number)}}, p->total_bytes);
  }
  w.Family("attnd_pool_attached_sessions", "gauge", "Sessions attached to each pool.");
  for (const auto& [number, p] : pools) {
    w.Sample("attnd_pool_attached_sessions", {{"pool", absl::StrCat(number)}},
             static_cast<double>(p->attached_sessions));
  }
  w.Family("attnd_pool_memory_allocated_bytes", "gauge", "Backend memory given to all pools.");
  w.Sample("attnd_pool_memory_allocated_bytes", {}, s.pool_bytes_allocated);

  w.Family("attnd_bytes_in_total", "counter",
           "Tensor bytes read from requests and client buffers since start.");
  w.Sample("attnd_bytes_in_total", {}, s.bytes_in);
  w.Family("attnd_bytes_out_total", "counter",
           "Tensor bytes written to responses and client buffers since start.");
  w.Sample("attnd_bytes_out_total", {}, s.bytes_out);

  w.Family("attnd_backend_healthy", "gauge", "1 while the attention backend can serve, else 0.");
  w.Sample("attnd_backend_healthy", {}, snapshot.backend_healthy ? 1.0 : 0.0);
  w.Family("attnd_device_errors_total", "counter",
           "Sticky device errors seen: commands that failed on a broken device, and health checks "
           "that found it broken first.");
  w.Sample("attnd_device_errors_total", {},
           static_cast<double>(device_errors_.load(std::memory_order_relaxed)));

  w.Family("attnd_info", "gauge", "Build and device information; the value is always 1.");
  w.Sample(
      "attnd_info",
      {{"version", snapshot.version}, {"backend", snapshot.backend}, {"device", snapshot.device}},
      1.0);
  return w.Take();
}

}  // namespace attnd::server::front
