// Pool commands through Core (server/core/commands/pools.cc): create, attach (tokens), describe,
// budgets, and the pool's release with its last session.
#include <string>

#include "core_test_util.h"
#include "expect_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/core.h"

namespace attnd::server::testing {
namespace {

using ::testing::HasSubstr;

TEST(CoreSessionsTest, AttachingAnotherPrincipalsPoolNeedsItsToken) {
  auto core = MakeCore();
  const std::string mine = Open(*core, SessionBinding::kStream, "a", 0, Identity{"uid:1000", ""});
  const std::string same_user = Open(*core, SessionBinding::kStream, "b", 0, Identity{"uid:1000", ""});
  const std::string other = Open(*core, SessionBinding::kStream, "c", 0, Identity{"uid:1001", ""});
  const std::string nobody = Open(*core, SessionBinding::kStream, "d", 0, Identity{});
  const v1::PoolInfo pool = CreatePool(*core, mine);
  ASSERT_FALSE(pool.attach_token().empty());
  EXPECT_TRUE(AttachByName(*core, same_user).ok());
  v1::AttachPoolRequest attach;
  attach.set_name("pool");
  EXPECT_STATUS(core->AttachPool(other, attach).status(), kPermissionDenied,
                HasSubstr("another principal"), HasSubstr("attach_token"));
  EXPECT_EQ(core->AttachPool(nobody, attach).status().code(), absl::StatusCode::kPermissionDenied);
  attach.set_attach_token("at-00000000000000000000000000000000");
  EXPECT_STATUS(core->AttachPool(other, attach).status(), kPermissionDenied,
                HasSubstr("not it"));
  attach.set_attach_token(pool.attach_token());
  EXPECT_TRUE(core->AttachPool(other, attach).ok());
  EXPECT_TRUE(core->AttachPool(nobody, attach).ok());
  // A pool created without a principal is attachable with its token only.
  const v1::PoolInfo anonymous = CreatePool(*core, nobody, {.name = "anon"});
  const std::string nobody_too = Open(*core, SessionBinding::kStream, "e", 0, Identity{});
  EXPECT_EQ(AttachByName(*core, nobody_too, "anon").code(), absl::StatusCode::kPermissionDenied);
}

TEST(CoreSessionsTest, CreatePoolReportsLayoutAndRefusesTakenNames) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, s);
  EXPECT_EQ(pool.name(), "pool");
  EXPECT_EQ(pool.num_pages(), 16);
  EXPECT_EQ(pool.free_pages(), 16);
  EXPECT_EQ(pool.attached_sessions(), 1);
  // [16 pages][2][4 tokens][2 heads][64 dims] fp16 per layer.
  EXPECT_EQ(pool.head_stride_bytes(), 64u * 2);
  EXPECT_EQ(pool.token_stride_bytes(), 2u * 64 * 2);
  EXPECT_EQ(pool.kv_stride_bytes(), 4u * 2 * 64 * 2);
  EXPECT_EQ(pool.page_stride_bytes(), 2u * 4 * 2 * 64 * 2);
  EXPECT_EQ(pool.layer_stride_bytes(), 16u * pool.page_stride_bytes());
  EXPECT_EQ(pool.total_bytes(), 2u * pool.layer_stride_bytes());
  EXPECT_TRUE(pool.cuda_ipc_handle().empty());
  EXPECT_EQ(core->Stats().pool_bytes_allocated, pool.total_bytes());
  EXPECT_EQ(core->GetServerInfo().memory_free_bytes(), (256ull << 20) - pool.total_bytes());

  const std::string other = Open(*core);
  EXPECT_STATUS(core->CreatePool(other, PoolRequest({})).status(), kAlreadyExists,
                HasSubstr("pool 'pool' already exists"));
  auto bad = PoolRequest({});
  bad.set_name("x y");
  EXPECT_EQ(core->CreatePool(other, bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CoreSessionsTest, PoolBeyondTheBudgetIsRefusedNamingTheBytes) {
  CoreOptions options;
  options.max_pool_bytes = 100000;
  auto core = MakeCore(options);
  const std::string s = Open(*core);
  PoolSpec spec;
  spec.num_pages = 16;  // 2 layers * 16 pages * 2048 bytes = 65536 bytes
  CreatePool(*core, s, spec);
  spec.name = "second";
  auto second = core->CreatePool(s, PoolRequest(spec));
  EXPECT_STATUS(second.status(), kResourceExhausted, HasSubstr("'second' needs 65536 bytes"),
                HasSubstr("only 34464"));
  // The refused pool took nothing: a smaller one fits.
  spec.num_pages = 8;
  EXPECT_TRUE(core->CreatePool(s, PoolRequest(spec)).ok());
}

TEST(CoreSessionsTest, AttachDescribeAndPoolVisibility) {
  auto core = MakeCore();
  const std::string a = Open(*core), b = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, a);

  v1::DescribePoolRequest describe;
  describe.set_pool_id(pool.pool_id());
  EXPECT_STATUS(core->DescribePool(b, describe).status(), kPermissionDenied,
                HasSubstr("not attached to pool 'pool'"));
  describe.set_pool_id("p-unknown");
  EXPECT_STATUS(core->DescribePool(b, describe).status(), kNotFound, HasSubstr("p-unknown"));

  v1::AttachPoolRequest attach;
  attach.set_name("nope");
  EXPECT_STATUS(core->AttachPool(b, attach).status(), kNotFound, HasSubstr("pool 'nope'"));
  attach.set_name("pool");
  auto attached = core->AttachPool(b, attach);
  ASSERT_TRUE(attached.ok()) << attached.status();
  EXPECT_EQ(attached->pool().pool_id(), pool.pool_id());
  EXPECT_EQ(attached->pool().attached_sessions(), 2);
  describe.set_pool_id(pool.pool_id());
  EXPECT_TRUE(core->DescribePool(b, describe).ok());
}

TEST(CoreSessionsTest, PoolIsFreedWhenItsLastSessionDetaches) {
  auto core = MakeCore();
  const std::string a = Open(*core), b = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, a);
  v1::AttachPoolRequest attach;
  attach.set_name("pool");
  ASSERT_TRUE(core->AttachPool(b, attach).ok());
  Allocate(*core, b, pool.pool_id(), 3);

  v1::DeletePoolRequest del;
  del.set_pool_id(pool.pool_id());
  ASSERT_TRUE(core->DeletePool(a, del).ok());
  EXPECT_EQ(core->Stats().pools.size(), 1u);  // b is still attached
  EXPECT_EQ(core->Stats().pools[0].attached_sessions, 1);
  EXPECT_EQ(core->DeletePool(a, del).status().code(), absl::StatusCode::kPermissionDenied);

  ASSERT_TRUE(core->CloseSession(b).ok());  // the last session: the pool goes
  EXPECT_TRUE(core->Stats().pools.empty());
  EXPECT_EQ(core->Stats().pool_bytes_allocated, 0u);
  EXPECT_EQ(core->AttachPool(a, attach).status().code(), absl::StatusCode::kNotFound);
  // The name is free again.
  EXPECT_TRUE(core->CreatePool(a, PoolRequest({})).ok());
}

}  // namespace
}  // namespace attnd::server::testing
