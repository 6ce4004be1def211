// A separate client process for the session clean-up tests (a fresh process, so it does not
// inherit the test's gRPC state as a fork would).
//
//   attnd_it_client_process TARGET POOL_NAME PAGES MODE
//
// Opens a Session stream, attaches to pool POOL_NAME, allocates PAGES pages, creates a decode
// plan over them, then prints "READY <session_id> <page ids...>" on stdout and
//   MODE=wait:      sleeps until killed by the parent;
//   MODE=self-kill: raises SIGKILL itself (the stream is never closed cleanly).
// Exits 2 (with a message on stderr) if any step fails.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "attnd/client/attnd_client.h"

namespace ac = attnd::client;

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s TARGET POOL_NAME PAGES wait|self-kill\n", argv[0]);
    return 2;
  }
  const std::string target = argv[1], pool_name = argv[2], mode = argv[4];
  const int pages = std::atoi(argv[3]);
  ac::ClientOptions options;
  options.target = target;
  options.client_name = "attnd-it-client-process";
  auto client = ac::Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "Create: %s\n", client.status().ToString().c_str());
    return 2;
  }
  auto session = (*client)->OpenSession();
  if (!session.ok()) {
    std::fprintf(stderr, "OpenSession: %s\n", session.status().ToString().c_str());
    return 2;
  }
  auto pool = (*session)->AttachPool(pool_name);
  if (!pool.ok()) {
    std::fprintf(stderr, "AttachPool: %s\n", pool.status().ToString().c_str());
    return 2;
  }
  auto grant = (*session)->AllocatePages(pool->pool_id(), pages);
  if (!grant.ok()) {
    std::fprintf(stderr, "AllocatePages: %s\n", grant.status().ToString().c_str());
    return 2;
  }
  // A plan holds its own page references: the daemon must drop those too.
  ac::PlanSpec plan;
  plan.pool_id = pool->pool_id();
  plan.kind = attnd::v1::ATTENTION_KIND_DECODE;
  plan.num_qo_heads = pool->num_kv_heads();
  plan.kv_indptr = {0, static_cast<int32_t>(grant->page_ids.size())};
  plan.kv_indices = grant->page_ids;
  plan.kv_last_page_len = {1};
  auto created = (*session)->CreatePlan(plan);
  if (!created.ok()) {
    std::fprintf(stderr, "CreatePlan: %s\n", created.status().ToString().c_str());
    return 2;
  }
  std::printf("READY %s", (*session)->session_id().c_str());
  for (int32_t id : grant->page_ids) std::printf(" %d", id);
  std::printf("\n");
  std::fflush(stdout);
  if (mode == "self-kill") raise(SIGKILL);
  for (;;) pause();
}
