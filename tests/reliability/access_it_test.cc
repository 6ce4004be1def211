// Access control against a real daemon: the bearer token (every denial: none, wrong, malformed;
// on unary calls and the Session stream), health open without it, TCP beyond loopback refused
// without a token, TLS and mutual TLS, quotas over the wire, and isolation by id (another
// session's pools, pages, plans and buffers cannot be used even when their ids are known).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attnd/client/attnd_client.h"
#include "attnd/v1/attnd.grpc.pb.h"
#include "daemon_fixture.h"
#include "gtest/gtest.h"
#include "test_util.h"

extern char** environ;

namespace attnd::testing {
namespace {

using absl::StatusCode;
constexpr char kToken[] = "reliability-test-token-5f2a9c";

std::string TempDir() {
  char dir[] = "/tmp/attnd-rel-XXXXXX";
  EXPECT_NE(mkdtemp(dir), nullptr);
  return dir;
}

std::string WriteFile(const std::string& path, const std::string& contents, mode_t mode) {
  std::ofstream(path) << contents;
  chmod(path.c_str(), mode);
  return path;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::unique_ptr<client::Client> ClientFor(const std::string& target, const std::string& token,
                                          client::ClientOptions options = {}) {
  options.target = target;
  options.token = token;
  options.default_deadline = absl::Seconds(20);
  auto c = client::Client::Create(options);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

class TokenTest : public DaemonTest {
 public:
  static void SetUpTestSuite() {
    dir_ = TempDir();
    DaemonOptions options;
    options.extra_flags = {
        "--token_file=" + WriteFile(dir_ + "/token", std::string(kToken) + "\n", 0600),
        "--max_pages_per_session=20", "--max_plans_per_session=3"};
    StartDaemon(options);
  }
  static void TearDownTestSuite() {
    DaemonTest::TearDownTestSuite();
    std::filesystem::remove_all(dir_);
  }

 protected:
  std::unique_ptr<client::Client> Authed() { return ClientFor(daemon().target(), kToken); }
  static inline std::string dir_;
};

TEST_F(TokenTest, EveryCallWithoutTheRightTokenIsUnauthenticated) {
  // client_ (the fixture's) carries no token.
  for (const std::string& token : {std::string(), std::string("wrong-token-0123456789"),
                                   std::string(kToken) + "x", std::string(kToken).substr(1)}) {
    auto c = ClientFor(daemon().target(), token);
    ASSERT_NE(c, nullptr);
    EXPECT_TRUE(StatusIs(c->GetServerInfo(), StatusCode::kUnauthenticated)) << token;
    EXPECT_TRUE(StatusIs(c->OpenSession(), StatusCode::kUnauthenticated)) << token;
    EXPECT_TRUE(StatusIs(c->OpenUnarySession(), StatusCode::kUnauthenticated)) << token;
  }
  // A malformed header (not "Bearer ...") and a unary command with a valid-looking session id.
  auto stub = v1::Attnd::NewStub(client_->channel());
  for (const std::string& header : {std::string("Basic ") + kToken, std::string(kToken),
                                    std::string("Bearer")}) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", header);
    context.AddMetadata(client::kSessionMetadataKey, "s-anything");
    v1::AllocatePagesRequest request;
    request.set_pool_id("p-anything");
    request.set_count(1);
    v1::AllocatePagesResponse response;
    EXPECT_EQ(stub->AllocatePages(&context, request, &response).error_code(),
              grpc::StatusCode::UNAUTHENTICATED)
        << header;
  }
  // Health stays open (liveness probes carry no token and learn nothing else).
  ExpectServing();
  // The right token works for both session kinds.
  auto good = Authed();
  ATTND_EXPECT_OK(good->GetServerInfo());
  ATTND_EXPECT_OK(good->OpenSession());
  ATTND_EXPECT_OK(good->OpenUnarySession());
  // The denials are counted in the metrics by code.
  auto metrics = HttpGet(daemon().http_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  const auto samples = ParsePrometheusText(metrics->second);
  EXPECT_GE(SumMetric(samples, "attnd_requests_total", {{"code", "UNAUTHENTICATED"}}), 12);
}

TEST_F(TokenTest, QuotasOverTheWireNameTheFlag) {
  auto c = Authed();
  auto s = c->OpenSession();
  ATTND_ASSERT_OK(s);
  ModelShape shape;
  shape.num_pages = 64;
  auto pool = (*s)->CreatePool(MakePoolSpec(shape, UniqueName("quota")));
  ATTND_ASSERT_OK(pool);
  auto first = (*s)->AllocatePages(pool->pool_id(), 15);
  ATTND_ASSERT_OK(first);
  EXPECT_TRUE(StatusIs((*s)->AllocatePages(pool->pool_id(), 6), StatusCode::kResourceExhausted,
                       {"--max_pages_per_session", "limit 20"}));
  client::PlanSpec plan;
  plan.pool_id = pool->pool_id();
  plan.num_qo_heads = shape.qo_heads;
  plan.kv_indptr = {0, 1};
  plan.kv_indices = {first->page_ids[0]};
  plan.kv_last_page_len = {1};
  for (int i = 0; i < 3; ++i) ATTND_ASSERT_OK((*s)->CreatePlan(plan));
  EXPECT_TRUE(StatusIs((*s)->CreatePlan(plan), StatusCode::kResourceExhausted,
                       {"--max_plans_per_session"}));
  // The stream goes on after a refused command.
  ATTND_EXPECT_OK((*s)->AllocatePages(pool->pool_id(), 5));
}

TEST_F(TokenTest, AnotherSessionsObjectsAreInvisibleByIdAndUntouched) {
  auto c = Authed();
  auto owner = c->OpenSession("owner");
  auto intruder = c->OpenSession("intruder");
  ATTND_ASSERT_OK(owner);
  ATTND_ASSERT_OK(intruder);
  ModelShape shape;
  const std::string name = UniqueName("isolated");
  auto owner_plan = CreateDecodePlan(**owner, shape, name, 2);
  ATTND_ASSERT_OK(owner_plan);
  // What the intruder knows (or guessed): the pool id, page ids and a plan over them.
  const std::string& pool_id = owner_plan->pool_id;
  const std::vector<int32_t>& pages = owner_plan->page_ids;
  const client::PlanSpec& plan = owner_plan->spec;
  auto region = client::SharedMemoryRegion::Create("attnd-rel-iso", 1 << 16);
  ATTND_ASSERT_OK(region);
  auto buffer = (*owner)->RegisterSharedMemory(**region, 1 << 16);
  ATTND_ASSERT_OK(buffer);

  // The pool by id, before attaching: PERMISSION_DENIED for every pool command.
  EXPECT_TRUE(StatusIs((*intruder)->DescribePool(pool_id), StatusCode::kPermissionDenied));
  EXPECT_TRUE(StatusIs((*intruder)->AllocatePages(pool_id, 1), StatusCode::kPermissionDenied));
  EXPECT_TRUE(StatusIs((*intruder)->FreePages(pool_id, pages), StatusCode::kPermissionDenied));
  EXPECT_TRUE(StatusIs((*intruder)->ForkPages(pool_id, pages), StatusCode::kPermissionDenied));
  EXPECT_TRUE(StatusIs((*intruder)->CreatePlan(plan), StatusCode::kPermissionDenied));
  EXPECT_TRUE(StatusIs((*intruder)->DeletePool(pool_id), StatusCode::kPermissionDenied));
  // The plan and buffer by id: not found (another session's ids are not even confirmed).
  EXPECT_TRUE(StatusIs((*intruder)->DeletePlan(owner_plan->plan_id), StatusCode::kNotFound));
  client::RunArgs run;
  run.plan_id = owner_plan->plan_id;
  run.q.set_dtype(v1::DTYPE_FLOAT16);
  run.q.add_shape(1);
  run.q.add_shape(shape.qo_heads);
  run.q.add_shape(shape.head_dim);
  run.q.mutable_inline_data()->assign(shape.qo_heads * shape.head_dim * 2, '\0');
  EXPECT_TRUE(StatusIs((*intruder)->Run(run), StatusCode::kNotFound));
  EXPECT_TRUE(StatusIs((*intruder)->UnregisterBuffer(*buffer), StatusCode::kNotFound));
  // Even attached to the same pool, the owner's pages are not the intruder's to free, fork or
  // plan over.
  ATTND_ASSERT_OK((*intruder)->AttachPool(name));
  EXPECT_TRUE(StatusIs((*intruder)->FreePages(pool_id, pages), StatusCode::kPermissionDenied));
  EXPECT_TRUE(StatusIs((*intruder)->ForkPages(pool_id, pages), StatusCode::kPermissionDenied));
  EXPECT_FALSE((*intruder)->CreatePlan(plan).ok());
  // A run whose q names the owner's buffer.
  auto own_pages = (*intruder)->AllocatePages(pool_id, 1);
  ATTND_ASSERT_OK(own_pages);
  client::PlanSpec own_plan = plan;
  own_plan.kv_indptr = {0, 1};
  own_plan.kv_indices = own_pages->page_ids;
  own_plan.kv_last_page_len = {1};
  auto intruder_plan = (*intruder)->CreatePlan(own_plan);
  ATTND_ASSERT_OK(intruder_plan);
  run.plan_id = intruder_plan->plan_id;
  run.q.mutable_buffer()->set_buffer_id(*buffer);
  EXPECT_TRUE(StatusIs((*intruder)->Run(run), StatusCode::kNotFound, {*buffer}));

  // The owner's objects are untouched.
  auto described = (*owner)->DescribePool(pool_id);
  ATTND_ASSERT_OK(described);
  EXPECT_EQ(described->free_pages(), shape.num_pages - 3);
  ATTND_EXPECT_OK((*owner)->DeletePlan(owner_plan->plan_id));
  ATTND_EXPECT_OK((*owner)->UnregisterBuffer(*buffer));
  ATTND_EXPECT_OK((*owner)->FreePages(pool_id, pages));
}

// ---- TCP and TLS: daemons started here (the fixture only knows unix sockets) --------------

struct Spawned {
  pid_t pid = -1;
  std::string log;
  ~Spawned() {
    if (pid > 0) {
      kill(pid, SIGTERM);
      int status = 0;
      waitpid(pid, &status, 0);
    }
  }
  // Waits for the process to exit on its own; its wait status, or -1 after `timeout`.
  int WaitExit(absl::Duration timeout) {
    const absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return status;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return -1;
  }
};

std::unique_ptr<Spawned> SpawnDaemon(const std::string& dir, std::vector<std::string> flags) {
  auto spawned = std::make_unique<Spawned>();
  spawned->log = dir + "/attnd.log";
  auto port = PickFreePort();
  EXPECT_TRUE(port.ok());
  std::vector<std::string> args = {DaemonBinaryPath(), "--backend=cpu", "--threads=2",
                                   absl::StrCat("--http_listen=127.0.0.1:", *port)};
  args.insert(args.end(), flags.begin(), flags.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, spawned->log.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  EXPECT_EQ(posix_spawn(&spawned->pid, argv[0], &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  return spawned;
}

bool WaitServing(client::Client& c, absl::Duration timeout = absl::Seconds(20)) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    auto health = c.CheckHealth();
    if (health.ok() && *health == client::HealthStatus::kServing) return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return false;
}

TEST(TcpAccessTest, NetworkReachableTcpWithoutTokenIsRefusedAtStart) {
  const std::string dir = TempDir();
  auto port = PickFreePort();
  ASSERT_TRUE(port.ok());
  auto daemon = SpawnDaemon(dir, {absl::StrCat("--listen=0.0.0.0:", *port)});
  const int status = daemon->WaitExit(absl::Seconds(20));
  ASSERT_NE(status, -1) << "attnd kept running on 0.0.0.0 without a token";
  EXPECT_NE(WEXITSTATUS(status), 0);
  EXPECT_NE(ReadFile(daemon->log).find("--token_file"), std::string::npos) << ReadFile(daemon->log);
  std::filesystem::remove_all(dir);
}

// A CA, a server certificate for localhost signed by it, and a client certificate (openssl).
struct Pki {
  std::string ca, server_cert, server_key, client_cert, client_key;
};
absl::StatusOr<Pki> MakePki(const std::string& dir) {
  const std::string script = absl::StrCat(
      "set -e; cd ", dir, "; exec >openssl.log 2>&1; ",
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=attnd-test-ca "
      "-keyout ca.key -out ca.pem; ",
      "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext; ",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr; ",
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
      "-extfile san.ext -out server.pem; ",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=engine -keyout client.key -out client.csr; ",
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
      "-out client.pem");
  if (std::system(script.c_str()) != 0) {
    return absl::InternalError("openssl failed: " + ReadFile(dir + "/openssl.log"));
  }
  return Pki{ReadFile(dir + "/ca.pem"), dir + "/server.pem", dir + "/server.key",
             ReadFile(dir + "/client.pem"), ReadFile(dir + "/client.key")};
}

TEST(TlsAccessTest, TlsWithTokenAndMutualTls) {
  if (std::system("command -v openssl >/dev/null 2>&1") != 0) GTEST_SKIP() << "no openssl CLI";
  const std::string dir = TempDir();
  auto pki = MakePki(dir);
  ASSERT_TRUE(pki.ok()) << pki.status();
  const std::string token_file = WriteFile(dir + "/token", kToken, 0600);
  auto port = PickFreePort();
  ASSERT_TRUE(port.ok());
  const std::string target = absl::StrCat("localhost:", *port);
  {
    auto daemon = SpawnDaemon(dir, {absl::StrCat("--listen=127.0.0.1:", *port),
                                    "--tls_cert=" + pki->server_cert,
                                    "--tls_key=" + pki->server_key, "--token_file=" + token_file});
    client::ClientOptions tls;
    tls.tls = true;
    tls.tls_root_certs_pem = pki->ca;
    auto good = ClientFor(target, kToken, tls);
    ASSERT_TRUE(WaitServing(*good)) << ReadFile(daemon->log);
    ATTND_EXPECT_OK(good->GetServerInfo());
    auto session = good->OpenSession();
    ATTND_ASSERT_OK(session);
    ATTND_EXPECT_OK((*session)->GetServerInfo());
    // TLS without the token, and plaintext with the token: refused.
    EXPECT_TRUE(StatusIs(ClientFor(target, "", tls)->GetServerInfo(),
                         StatusCode::kUnauthenticated));
    client::ClientOptions plain;
    plain.default_deadline = absl::Seconds(3);
    EXPECT_FALSE(ClientFor(target, kToken, plain)->GetServerInfo().ok());
    // A client that does not trust the daemon's CA refuses it.
    client::ClientOptions untrusted = tls;
    untrusted.tls_root_certs_pem = pki->client_cert;  // not a CA of the server cert
    untrusted.default_deadline = absl::Seconds(3);
    EXPECT_FALSE(ClientFor(target, kToken, untrusted)->GetServerInfo().ok());
  }
  {
    auto port2 = PickFreePort();
    ASSERT_TRUE(port2.ok());
    const std::string target2 = absl::StrCat("localhost:", *port2);
    auto daemon = SpawnDaemon(dir, {absl::StrCat("--listen=127.0.0.1:", *port2),
                                    "--tls_cert=" + pki->server_cert,
                                    "--tls_key=" + pki->server_key,
                                    "--tls_client_ca=" + dir + "/ca.pem"});
    client::ClientOptions mtls;
    mtls.tls = true;
    mtls.tls_root_certs_pem = pki->ca;
    mtls.tls_client_cert_pem = pki->client_cert;
    mtls.tls_client_key_pem = pki->client_key;
    auto good = ClientFor(target2, "", mtls);
    ASSERT_TRUE(WaitServing(*good)) << ReadFile(daemon->log);
    ATTND_EXPECT_OK(good->GetServerInfo());
    client::ClientOptions no_cert = mtls;
    no_cert.tls_client_cert_pem.clear();
    no_cert.tls_client_key_pem.clear();
    no_cert.default_deadline = absl::Seconds(3);
    EXPECT_FALSE(ClientFor(target2, "", no_cert)->GetServerInfo().ok());
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace attnd::testing
