// Sessions end and release what they hold: a client process that is SIGKILLed (its stream
// breaks), a unary session whose lease runs out, an explicit close.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <sstream>

#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "daemon_fixture.h"

extern char** environ;

namespace attnd::testing {
namespace {

constexpr uint32_t kLeaseMs = 600;

// The helper client process (client_process_main.cc): its pid and the READY line it printed.
struct ChildClient {
  pid_t pid = -1;
  std::string session_id;
  std::vector<int32_t> pages;
};

absl::StatusOr<ChildClient> SpawnChildClient(const std::string& target, const std::string& pool,
                                             int pages, const std::string& mode) {
  int fds[2];
  if (pipe(fds) != 0) return absl::InternalError("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  std::string binary = ATTND_IT_CLIENT_PROCESS_PATH;
  std::string pages_text = std::to_string(pages);
  std::vector<char*> argv = {binary.data(), const_cast<char*>(target.c_str()),
                             const_cast<char*>(pool.c_str()), pages_text.data(),
                             const_cast<char*>(mode.c_str()), nullptr};
  ChildClient child;
  const int rc = posix_spawn(&child.pid, binary.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return absl::InternalError(absl::StrCat("posix_spawn(", binary, ") failed: ", rc));
  }
  // Read the READY line (the child exits with 2 on failure, closing the pipe).
  std::string line;
  char c;
  while (read(fds[0], &c, 1) == 1 && c != '\n') line += c;
  close(fds[0]);
  std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
  if (parts.size() < 2 || parts[0] != "READY") {
    kill(child.pid, SIGKILL);
    waitpid(child.pid, nullptr, 0);
    return absl::InternalError(absl::StrCat("child client did not get ready: '", line, "'"));
  }
  child.session_id = parts[1];
  for (size_t i = 2; i < parts.size(); ++i) child.pages.push_back(std::stoi(parts[i]));
  return child;
}

class SessionCleanupTest : public DaemonTest {
 public:
  static void SetUpTestSuite() {
    DaemonOptions options;
    options.session_lease_ms = kLeaseMs;
    StartDaemon(options);
  }

 protected:
  // Polls DescribePool until free_pages == want or `timeout` passes; returns the last value.
  int64_t WaitForFreePages(client::SessionApi& s, const std::string& pool_id, int64_t want,
                           absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    int64_t free_pages = -1;
    while (true) {
      auto pool = s.DescribePool(pool_id);
      if (pool.ok()) free_pages = pool->free_pages();
      if (free_pages == want || absl::Now() > deadline) return free_pages;
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
};

TEST_F(SessionCleanupTest, KilledClientProcessReleasesItsPagesAndPlans) {
  ModelShape shape;
  shape.num_pages = 40;
  auto parent = client_->OpenSession("parent");
  ATTND_ASSERT_OK(parent);
  const std::string name = UniqueName("killed");
  auto pool = (*parent)->CreatePool(MakePoolSpec(shape, name));
  ATTND_ASSERT_OK(pool);
  // The parent holds pages of its own, which must survive the child's death.
  Workload work(parent->get(), shape, pool->pool_id(), /*seed=*/9);
  ATTND_ASSERT_OK(work.Prefill({18}));
  const int64_t parent_pages = static_cast<int64_t>(work.AllPages().size());

  for (const std::string mode : {"wait", "self-kill"}) {
    SCOPED_TRACE(mode);
    auto child = SpawnChildClient(daemon().target(), name, 7, mode);
    ATTND_ASSERT_OK(child);
    EXPECT_EQ(child->pages.size(), 7u);
    if (mode == "wait") {
      // Alive: its pages are in use, and the pool counts two sessions.
      auto described = (*parent)->DescribePool(pool->pool_id());
      ATTND_ASSERT_OK(described);
      EXPECT_EQ(described->free_pages(), shape.num_pages - parent_pages - 7);
      EXPECT_EQ(described->attached_sessions(), 2);
      ASSERT_EQ(kill(child->pid, SIGKILL), 0);
    }
    int wait_status = 0;
    ASSERT_EQ(waitpid(child->pid, &wait_status, 0), child->pid);
    EXPECT_TRUE(WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGKILL);

    EXPECT_EQ(WaitForFreePages(**parent, pool->pool_id(), shape.num_pages - parent_pages),
              shape.num_pages - parent_pages)
        << "the killed client's pages (and its plan's references) were not released";
    auto described = (*parent)->DescribePool(pool->pool_id());
    ATTND_ASSERT_OK(described);
    EXPECT_EQ(described->attached_sessions(), 1);
  }
  // The parent's own data is intact.
  ATTND_EXPECT_OK(work.DecodeStep());
  ExpectServing();
}

TEST_F(SessionCleanupTest, CancelledStreamReleasesItsPages) {
  ModelShape shape;
  shape.num_pages = 12;
  auto parent = client_->OpenSession("parent");
  ATTND_ASSERT_OK(parent);
  const std::string name = UniqueName("cancelled");
  auto pool = (*parent)->CreatePool(MakePoolSpec(shape, name));
  ATTND_ASSERT_OK(pool);
  auto child = client_->OpenSession("cancelled");
  ATTND_ASSERT_OK(child);
  ATTND_ASSERT_OK((*child)->AttachPool(name));
  ATTND_ASSERT_OK((*child)->AllocatePages(pool->pool_id(), 5));
  auto region = client::SharedMemoryRegion::Create(absl::StrCat("/", UniqueName("attnd-cancel")),
                                                   4096);
  ATTND_ASSERT_OK(region);
  ATTND_ASSERT_OK((*child)->RegisterSharedMemory(**region, 4096));
  (*child)->Abort();  // the RPC is cancelled, as when a client's connection drops
  EXPECT_FALSE((*child)->is_open());
  EXPECT_EQ(WaitForFreePages(**parent, pool->pool_id(), shape.num_pages), shape.num_pages);
  auto described = (*parent)->DescribePool(pool->pool_id());
  ATTND_ASSERT_OK(described);
  EXPECT_EQ(described->attached_sessions(), 1);
}

TEST_F(SessionCleanupTest, DeletePoolDropsTheSessionsPagesAndPlansThere) {
  ModelShape shape;
  shape.num_pages = 10;
  auto owner = client_->OpenSession("owner");
  auto keeper = client_->OpenSession("keeper");
  ATTND_ASSERT_OK(owner);
  ATTND_ASSERT_OK(keeper);
  const std::string name = UniqueName("detach");
  auto pool = (*owner)->CreatePool(MakePoolSpec(shape, name));
  ATTND_ASSERT_OK(pool);
  ATTND_ASSERT_OK((*keeper)->AttachPool(name));
  Workload work(owner->get(), shape, pool->pool_id(), /*seed=*/12);
  ATTND_ASSERT_OK(work.Prefill({40}));  // 3 pages
  client::PlanSpec spec = work.PlanFor(v1::ATTENTION_KIND_DECODE, {0}, {1});
  spec.qo_indptr.clear();
  auto plan = (*owner)->CreatePlan(spec);
  ATTND_ASSERT_OK(plan);
  ATTND_ASSERT_OK((*owner)->DeletePool(pool->pool_id()));

  // The keeper still has the pool; the owner's pages (and its plan's references) are back.
  auto described = (*keeper)->DescribePool(pool->pool_id());
  ATTND_ASSERT_OK(described);
  EXPECT_EQ(described->free_pages(), shape.num_pages);
  EXPECT_EQ(described->attached_sessions(), 1);
  // The owner's plan there is gone, and it can no longer use the pool.
  client::RunArgs run;
  run.plan_id = plan->plan_id;
  run.q = *client::MakeTensor(std::vector<float>(shape.qo_heads * shape.head_dim, 0.f),
                              {1, shape.qo_heads, shape.head_dim}, shape.q_dtype);
  EXPECT_TRUE(StatusIs((*owner)->Run(run), absl::StatusCode::kNotFound, {plan->plan_id}));
  EXPECT_FALSE((*owner)->AllocatePages(pool->pool_id(), 1).ok());
  // Attaching again works, with nothing held.
  auto again = (*owner)->AttachPool(name);
  ATTND_ASSERT_OK(again);
  EXPECT_EQ(again->free_pages(), shape.num_pages);
}

TEST_F(SessionCleanupTest, PoolIsReleasedWhenItsLastSessionEnds) {
  ModelShape shape;
  const std::string name = UniqueName("last");
  {
    auto session = client_->OpenSession();
    ATTND_ASSERT_OK(session);
    ATTND_ASSERT_OK((*session)->CreatePool(MakePoolSpec(shape, name)));
    ATTND_ASSERT_OK((*session)->Close());
  }
  auto other = client_->OpenSession();
  ATTND_ASSERT_OK(other);
  EXPECT_TRUE(StatusIs((*other)->AttachPool(name), absl::StatusCode::kNotFound, {name}));
  // The name is free again.
  ATTND_EXPECT_OK((*other)->CreatePool(MakePoolSpec(shape, name)));
}

TEST_F(SessionCleanupTest, UnaryLeaseExpiresWithoutCalls) {
  ModelShape shape;
  shape.num_pages = 20;
  auto parent = client_->OpenSession("parent");
  ATTND_ASSERT_OK(parent);
  const std::string name = UniqueName("lease");
  auto pool = (*parent)->CreatePool(MakePoolSpec(shape, name));
  ATTND_ASSERT_OK(pool);

  auto unary = client_->OpenUnarySession("leased");
  ATTND_ASSERT_OK(unary);
  EXPECT_EQ((*unary)->lease_ms(), kLeaseMs);  // the daemon's --session_lease_ms
  ATTND_ASSERT_OK((*unary)->AttachPool(name));
  ATTND_ASSERT_OK((*unary)->AllocatePages(pool->pool_id(), 5));

  // Calls renew the lease: keep it busy for 3 leases.
  const absl::Time busy_until = absl::Now() + absl::Milliseconds(3 * kLeaseMs);
  while (absl::Now() < busy_until) {
    auto described = (*unary)->DescribePool(pool->pool_id());
    ASSERT_TRUE(described.ok()) << "the lease expired although calls kept naming the session: "
                                << described.status();
    EXPECT_EQ(described->free_pages(), shape.num_pages - 5);
    absl::SleepFor(absl::Milliseconds(kLeaseMs / 4));
  }

  // Silence: the daemon releases the session and its pages.
  const std::string session_id = (*unary)->session_id();
  (*unary)->Release();
  EXPECT_EQ(WaitForFreePages(**parent, pool->pool_id(), shape.num_pages, absl::Seconds(10)),
            shape.num_pages);
  auto described = (*parent)->DescribePool(pool->pool_id());
  ATTND_ASSERT_OK(described);
  EXPECT_EQ(described->attached_sessions(), 1);
  // A call naming the expired session: NOT_FOUND, naming it by its tag ("s7"), not its id.
  EXPECT_TRUE(StatusIs((*unary)->DescribePool(pool->pool_id()), absl::StatusCode::kNotFound,
                       {"session " + session_id.substr(0, session_id.find('-')) + " "}));
}

TEST_F(SessionCleanupTest, UnarySessionHonoursRequestedLeaseAndClose) {
  auto unary = client_->OpenUnarySession("short", /*lease_ms=*/250);
  ATTND_ASSERT_OK(unary);
  EXPECT_EQ((*unary)->lease_ms(), 250u);
  // Alive: an unknown pool is NOT_FOUND for the pool, not for the session.
  auto alive = (*unary)->DescribePool("no-such-pool");
  EXPECT_TRUE(StatusIs(alive, absl::StatusCode::kNotFound, {"no-such-pool"}));
  EXPECT_EQ(alive.status().message().find((*unary)->session_id()), std::string::npos) << alive.status();
  absl::SleepFor(absl::Milliseconds(1500));
  const auto tag = [](const std::string& id) { return "session " + id.substr(0, id.find('-')) + " "; };
  EXPECT_TRUE(StatusIs((*unary)->DescribePool("no-such-pool"), absl::StatusCode::kNotFound,
                       {tag((*unary)->session_id())}));

  auto closed = client_->OpenUnarySession("closed");
  ATTND_ASSERT_OK(closed);
  ATTND_ASSERT_OK((*closed)->Close());
  // Close() marked it closed locally; a raw call with its id must now fail.
  auto again = (*closed)->DescribePool("no-such-pool");
  EXPECT_TRUE(StatusIs(again, absl::StatusCode::kNotFound, {tag((*closed)->session_id())}));
}

}  // namespace
}  // namespace attnd::testing
