// attnd load generator: many concurrent sessions on one daemon, each running a mixed workload
// (allocate pages, prefill with K/V appended, decode steps, free pages, extra alloc/free churn)
// whose every attention output is checked against the float64 reference. Reports throughput,
// per-command latency p50/p99 and errors, as a table and one JSON line.
//
//   load_generator --target=unix:///tmp/attnd.sock --sessions=8 --duration_s=60
//
// Exit status: 0 when every command succeeded and every output matched, and (with a pool it
// created) every page came back; 1 otherwise; 2 for bad flags or no daemon. With
// --tolerate_disconnect, UNAVAILABLE/CANCELLED (daemon shutting down) end a worker cleanly
// instead of counting as errors (the SIGTERM-under-load test).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "attnd/client/attnd_client.h"
#include "test_util.h"

ABSL_FLAG(std::string, target, "unix:///tmp/attnd.sock", "daemon gRPC target");
ABSL_FLAG(std::string, token, "", "bearer token (default: $ATTND_TOKEN)");
ABSL_FLAG(int, sessions, 8, "concurrent sessions (one thread each)");
ABSL_FLAG(double, duration_s, 10, "how long to run, seconds");
ABSL_FLAG(double, unary_fraction, 0.25, "share of sessions that use unary calls, not a stream");
ABSL_FLAG(std::string, pool, "",
          "attach to this existing pool (its geometry must be the generator's model); empty: "
          "create one (lg-<pid>), held by a holder session, and check that every page comes back");
ABSL_FLAG(int64_t, pool_pages, 0, "pages of the created pool; 0 = 48 per session");
ABSL_FLAG(uint32_t, seed, 1, "random seed");
ABSL_FLAG(bool, tolerate_disconnect, false,
          "UNAVAILABLE/CANCELLED end a worker cleanly (daemon shutdown test)");
ABSL_FLAG(bool, quiet, false, "only the JSON line");

namespace {

namespace ac = attnd::client;
namespace at = attnd::testing;
namespace v1 = attnd::v1;
using Clock = std::chrono::steady_clock;

// The model every session runs (small, so the CPU backend keeps up with many sessions).
at::ModelShape Model() {
  at::ModelShape shape;
  shape.layers = 2;
  shape.kv_heads = 2;
  shape.qo_heads = 4;
  shape.head_dim = 64;
  shape.page_size = 8;
  shape.kv_dtype = v1::DTYPE_FLOAT16;
  shape.q_dtype = v1::DTYPE_FLOAT16;
  return shape;
}

// Counts and times every command that goes through it (a SessionApi decorator).
class TimedSession final : public ac::SessionApi {
 public:
  explicit TimedSession(ac::SessionApi* inner) : inner_(inner) {}
  const std::string& session_id() const override { return inner_->session_id(); }
  absl::StatusOr<v1::SessionResponse> Execute(v1::SessionRequest request) override {
    const auto start = Clock::now();
    auto response = inner_->Execute(std::move(request));
    latencies_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    return response;
  }
  std::vector<double> latencies_us;

 private:
  ac::SessionApi* inner_;
};

struct Totals {
  std::mutex mu;
  std::vector<double> latencies_us;
  int64_t steps = 0;         // workload steps (prefill, decode, churn) that succeeded
  int64_t errors = 0;        // failed commands or mismatching outputs
  int64_t backpressure = 0;  // RESOURCE_EXHAUSTED from a full shared pool (expected, retried)
  int64_t disconnects = 0;   // with --tolerate_disconnect
  double max_o_error = 0;
  std::vector<std::string> first_errors;
};

bool IsDisconnect(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsCancelled(s) || absl::IsAborted(s);
}

void Worker(int index, ac::Client& client, const std::string& pool_name, absl::Time end,
            Totals& totals) {
  std::mt19937 rng(absl::GetFlag(FLAGS_seed) * 7919u + index);
  const bool unary =
      std::uniform_real_distribution<double>(0, 1)(rng) < absl::GetFlag(FLAGS_unary_fraction);
  std::unique_ptr<ac::SessionApi> session;
  absl::Status opened;
  if (unary) {
    auto s = client.OpenUnarySession(absl::StrCat("lg-", index));
    opened = s.status();
    if (s.ok()) session = *std::move(s);
  } else {
    auto s = client.OpenSession(absl::StrCat("lg-", index));
    opened = s.status();
    if (s.ok()) session = *std::move(s);
  }
  int64_t errors = 0, steps = 0, backpressure = 0, disconnects = 0;
  std::vector<std::string> messages;
  auto fail = [&](const std::string& what, const absl::Status& s) {
    // Once the daemon went away, what follows (e.g. "the session stream is closed") is the
    // same disconnect, not a new error.
    if (absl::GetFlag(FLAGS_tolerate_disconnect) && (IsDisconnect(s) || disconnects > 0)) {
      ++disconnects;
      return;
    }
    ++errors;
    if (messages.size() < 3)
      messages.push_back(absl::StrCat("session ", index, " ", what, ": ", s.ToString()));
  };
  TimedSession timed(session.get());
  double max_o_error = 0;
  if (!opened.ok()) {
    fail("open", opened);
  } else {
    auto pool = timed.AttachPool(pool_name);
    if (!pool.ok()) {
      fail("attach", pool.status());
    } else {
      const at::ModelShape shape = Model();
      int round = 0;
      while (absl::Now() < end && errors == 0 && disconnects == 0) {
        at::Workload workload(&timed, shape, pool->pool_id(), rng(), 5e-3);
        std::vector<int> lens;
        const int batch = std::uniform_int_distribution<int>(1, 3)(rng);
        for (int b = 0; b < batch; ++b)
          lens.push_back(std::uniform_int_distribution<int>(1, 40)(rng));
        absl::Status s = workload.Prefill(lens);
        if (absl::IsResourceExhausted(s)) {
          ++backpressure;
          (void)workload.FreeAll();
          absl::SleepFor(absl::Milliseconds(5));
          continue;
        }
        if (!s.ok()) {
          fail("prefill", s);
          break;
        }
        ++steps;
        const int decode_steps = std::uniform_int_distribution<int>(1, 6)(rng);
        for (int d = 0; d < decode_steps && s.ok(); ++d) {
          s = workload.DecodeStep();
          if (absl::IsResourceExhausted(s)) {
            ++backpressure;
            s = absl::OkStatus();
            break;
          }
          if (s.ok()) ++steps;
        }
        if (!s.ok()) {
          fail("decode", s);
          (void)workload.FreeAll();
          break;
        }
        // Churn: allocate a few pages and free them again (allocator under contention).
        if (round++ % 2 == 0) {
          auto grant =
              timed.AllocatePages(pool->pool_id(), std::uniform_int_distribution<int>(1, 4)(rng));
          if (grant.ok()) {
            auto freed = timed.FreePages(pool->pool_id(), grant->page_ids);
            if (!freed.ok())
              fail("churn free", freed.status());
            else
              ++steps;
          } else if (absl::IsResourceExhausted(grant.status())) {
            ++backpressure;
          } else {
            fail("churn alloc", grant.status());
          }
        }
        max_o_error = std::max(max_o_error, workload.max_o_error());
        s = workload.FreeAll();
        if (!s.ok()) fail("free", s);
      }
    }
  }
  if (auto* stream = dynamic_cast<ac::Session*>(session.get()); stream != nullptr) {
    const absl::Status closed = stream->Close();
    if (!closed.ok() && !(absl::GetFlag(FLAGS_tolerate_disconnect) && IsDisconnect(closed))) {
      fail("close", closed);
    }
  }
  session.reset();
  std::lock_guard<std::mutex> lock(totals.mu);
  totals.latencies_us.insert(totals.latencies_us.end(), timed.latencies_us.begin(),
                             timed.latencies_us.end());
  totals.steps += steps;
  totals.errors += errors;
  totals.backpressure += backpressure;
  totals.disconnects += disconnects;
  totals.max_o_error = std::max(totals.max_o_error, max_o_error);
  for (auto& m : messages) {
    if (totals.first_errors.size() < 8) totals.first_errors.push_back(std::move(m));
  }
}

double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(std::llround(p * (v.size() - 1))));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  absl::ParseCommandLine(argc, argv);
  const int sessions = absl::GetFlag(FLAGS_sessions);
  if (sessions < 1 || absl::GetFlag(FLAGS_duration_s) <= 0) {
    std::fprintf(stderr, "load_generator: --sessions >= 1 and --duration_s > 0\n");
    return 2;
  }
  ac::ClientOptions options;
  options.target = absl::GetFlag(FLAGS_target);
  options.token = absl::GetFlag(FLAGS_token);
  if (options.token.empty() && std::getenv("ATTND_TOKEN") != nullptr) {
    options.token = std::getenv("ATTND_TOKEN");
  }
  options.client_name = "attnd-load-generator";
  options.default_deadline = absl::Seconds(60);
  auto client = ac::Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "load_generator: %s\n", client.status().ToString().c_str());
    return 2;
  }
  if (absl::Status c = (*client)->WaitForConnected(absl::Seconds(10)); !c.ok()) {
    std::fprintf(stderr, "load_generator: %s\n", c.ToString().c_str());
    return 2;
  }

  // The pool: an existing one by name, or one created here and held by a holder session.
  std::string pool_name = absl::GetFlag(FLAGS_pool);
  std::unique_ptr<ac::Session> holder;
  std::string holder_pool_id;
  int64_t pool_pages = 0;
  if (pool_name.empty()) {
    pool_name = absl::StrCat("lg-", getpid());
    auto s = (*client)->OpenSession("lg-holder");
    if (!s.ok()) {
      std::fprintf(stderr, "load_generator: holder session: %s\n", s.status().ToString().c_str());
      return absl::IsUnauthenticated(s.status()) ? 2 : 1;
    }
    holder = *std::move(s);
    pool_pages =
        absl::GetFlag(FLAGS_pool_pages) > 0 ? absl::GetFlag(FLAGS_pool_pages) : 48 * sessions;
    auto pool = holder->CreatePool(at::MakePoolSpec(
        [&] {
          at::ModelShape m = Model();
          m.num_pages = pool_pages;
          return m;
        }(),
        pool_name));
    if (!pool.ok()) {
      std::fprintf(stderr, "load_generator: create pool: %s\n", pool.status().ToString().c_str());
      return 1;
    }
    holder_pool_id = pool->pool_id();
  }

  Totals totals;
  const auto start = Clock::now();
  const absl::Time end = absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_duration_s));
  std::vector<std::thread> threads;
  for (int i = 0; i < sessions; ++i) {
    threads.emplace_back(Worker, i, std::ref(**client), pool_name, end, std::ref(totals));
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  // Every page must be back once every worker freed and closed.
  int64_t leaked = 0;
  if (holder != nullptr) {
    auto described = holder->DescribePool(holder_pool_id);
    if (!described.ok()) {
      if (!(absl::GetFlag(FLAGS_tolerate_disconnect) && IsDisconnect(described.status()))) {
        ++totals.errors;
        totals.first_errors.push_back("describe pool at the end: " + described.status().ToString());
      }
    } else {
      leaked = pool_pages - described->free_pages();
    }
    (void)holder->Close();
  }

  const int64_t requests = static_cast<int64_t>(totals.latencies_us.size());
  const double p50 = Percentile(totals.latencies_us, 0.50);
  const double p99 = Percentile(totals.latencies_us, 0.99);
  if (!absl::GetFlag(FLAGS_quiet)) {
    std::printf("load_generator: %d sessions, %.1f s\n", sessions, seconds);
    std::printf("  commands        %lld (%.0f/s)\n", static_cast<long long>(requests),
                requests / seconds);
    std::printf("  workload steps  %lld\n", static_cast<long long>(totals.steps));
    std::printf("  latency         p50 %.0f us, p99 %.0f us\n", p50, p99);
    std::printf("  max |o - ref|   %.2e\n", totals.max_o_error);
    std::printf("  backpressure    %lld (pool full, retried)\n",
                static_cast<long long>(totals.backpressure));
    std::printf("  disconnects     %lld\n", static_cast<long long>(totals.disconnects));
    std::printf("  errors          %lld\n", static_cast<long long>(totals.errors));
    std::printf("  leaked pages    %lld\n", static_cast<long long>(leaked));
    for (const auto& e : totals.first_errors) std::printf("  error: %s\n", e.c_str());
  }
  std::printf(
      "{\"bench\":\"load_generator\",\"sessions\":%d,\"seconds\":%.2f,\"requests\":%lld,"
      "\"requests_per_s\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"steps\":%lld,\"errors\":%lld,"
      "\"backpressure\":%lld,\"disconnects\":%lld,\"leaked_pages\":%lld,\"max_o_error\":%.3e}\n",
      sessions, seconds, static_cast<long long>(requests), requests / seconds, p50, p99,
      static_cast<long long>(totals.steps), static_cast<long long>(totals.errors),
      static_cast<long long>(totals.backpressure), static_cast<long long>(totals.disconnects),
      static_cast<long long>(leaked), totals.max_o_error);
  std::fflush(stdout);
  return totals.errors == 0 && leaked == 0 ? 0 : 1;
}
