// The Core hub through its public API (server/core/core.cc): server info and shutdown.
#include <string>

#include "core_test_util.h"
#include "expect_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/core.h"

namespace attnd::server::testing {
namespace {

using ::testing::HasSubstr;

TEST(CoreSessionsTest, ServerInfoSaysWhichPageSizesAndAlignmentsAreAccepted) {
  auto core = MakeCore();
  const v1::ServerInfo info = core->GetServerInfo();
  EXPECT_EQ(info.page_sizes_size(), 0);
  EXPECT_EQ(info.max_page_size(), 65536);
  EXPECT_EQ(info.tensor_alignment_bytes(), 0u);
  const std::string s = Open(*core);
  EXPECT_TRUE(core->CreatePool(s, PoolRequest({.name = "p1", .page_size = 1})).ok());
  EXPECT_TRUE(
      core->CreatePool(s, PoolRequest({.name = "p7", .page_size = 7, .num_pages = 4})).ok());
  EXPECT_STATUS(core->CreatePool(s, PoolRequest({.name = "pbig", .page_size = 65537})).status(),
                kInvalidArgument, HasSubstr("page_size=65537 must be in 1..65536"));
}

// Pools of another principal are attached with their attach token only.

TEST(CoreSessionsTest, ServerInfoDescribesTheCpuBackend) {
  auto core = MakeCore();
  const v1::ServerInfo info = core->GetServerInfo();
  EXPECT_EQ(info.backend(), "cpu");
  EXPECT_TRUE(info.shared_memory());
  EXPECT_FALSE(info.cuda_ipc());
  EXPECT_EQ(info.memory_total_bytes(), 256ull << 20);
  EXPECT_EQ(info.memory_free_bytes(), 256ull << 20);
  EXPECT_THAT(info.head_dims(), ::testing::Contains(64));
  EXPECT_THAT(info.kv_dtypes(), ::testing::Contains(v1::DTYPE_FLOAT16));
  EXPECT_THAT(info.kv_dtypes(), ::testing::Contains(v1::DTYPE_FLOAT8_E5M2));
  EXPECT_THAT(
      info.kernel_paths(),
      ::testing::ElementsAre("every shape: the CPU reference (kernels/cpu, fp32 accumulation)"));
  EXPECT_TRUE(core->Health().ok());
}

TEST(CoreSessionsTest, CloseAllReleasesEverything) {
  auto core = MakeCore();
  const std::string a = Open(*core), b = Open(*core, SessionBinding::kLeased);
  CreatePool(*core, a);
  PoolSpec spec;
  spec.name = "other";
  CreatePool(*core, b, spec);
  EXPECT_EQ(core->Stats().pools.size(), 2u);
  core->CloseAll();
  const CoreStats stats = core->Stats();
  EXPECT_EQ(stats.sessions, 0);
  EXPECT_TRUE(stats.pools.empty());
  EXPECT_EQ(stats.pool_bytes_allocated, 0u);
}

}  // namespace
}  // namespace attnd::server::testing
