// Helpers shared by the Core tests: a Core over the CPU backend and short-hands for the
// commands whose setup every test needs.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "attnd/kernels/backend.h"
#include "attnd/kernels/float_convert.h"
#include "gtest/gtest.h"
#include "server/core/core.h"

namespace attnd::server::testing {

inline std::unique_ptr<Core> MakeCore(CoreOptions options = {}) {
  auto backend = kernels::CreateCpuBackend(kernels::CpuBackendOptions{.num_threads = 2});
  EXPECT_TRUE(backend.ok()) << backend.status();
  if (options.max_pool_bytes == 0) options.max_pool_bytes = 256ull << 20;
  auto core = Core::Create(options, *std::move(backend));
  EXPECT_TRUE(core.ok()) << core.status();
  return *std::move(core);
}

// The identity test sessions have unless a test says otherwise: one principal, so that they
// may attach to each other's pools by name as sessions of one user do.
inline Identity TestOwner() { return Identity{"uid:test", ""}; }

inline std::string Open(Core& core, SessionBinding binding = SessionBinding::kStream,
                        const std::string& client = "test", uint32_t lease_ms = 0,
                        const Identity& owner = TestOwner()) {
  v1::OpenSessionRequest request;
  request.set_client_name(client);
  request.set_lease_ms(lease_ms);
  auto response = core.OpenSession(request, binding, owner);
  EXPECT_TRUE(response.ok()) << response.status();
  return response->session_id();
}

struct PoolSpec {
  std::string name = "pool";
  int32_t num_layers = 2;
  int32_t num_kv_heads = 2;
  int32_t head_dim = 64;
  int32_t page_size = 4;
  v1::DType kv_dtype = v1::DTYPE_FLOAT16;
  int64_t num_pages = 16;
};

inline v1::CreatePoolRequest PoolRequest(const PoolSpec& spec) {
  v1::CreatePoolRequest request;
  request.set_name(spec.name);
  request.set_num_layers(spec.num_layers);
  request.set_num_kv_heads(spec.num_kv_heads);
  request.set_head_dim(spec.head_dim);
  request.set_page_size(spec.page_size);
  request.set_kv_dtype(spec.kv_dtype);
  request.set_num_pages(spec.num_pages);
  return request;
}

inline v1::PoolInfo CreatePool(Core& core, const std::string& session, const PoolSpec& spec = {}) {
  auto response = core.CreatePool(session, PoolRequest(spec));
  EXPECT_TRUE(response.ok()) << response.status();
  return response->pool();
}

// Attaches `session` to the pool called `name` (AttachPool).
inline absl::Status AttachByName(Core& core, const std::string& session,
                                 const std::string& name = "pool") {
  v1::AttachPoolRequest request;
  request.set_name(name);
  return core.AttachPool(session, request).status();
}

// An inline fp16 tensor of `shape` whose bytes are all `fill`.
inline v1::Tensor HalfTensor(const std::vector<int64_t>& shape, char fill = '\0') {
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_FLOAT16);
  int64_t n = 1;
  for (int64_t d : shape) {
    t.add_shape(d);
    n *= d;
  }
  t.set_inline_data(std::string(static_cast<size_t>(n) * 2, fill));
  return t;
}

// An inline tensor of `shape` in `dtype` (float32 or float16) of uniform values in [-1, 1].
inline v1::Tensor RandomTensor(std::mt19937& rng, v1::DType dtype,
                               const std::vector<int64_t>& shape) {
  v1::Tensor t;
  t.set_dtype(dtype);
  int64_t n = 1;
  for (int64_t d : shape) {
    t.add_shape(d);
    n *= d;
  }
  const kernels::DType kd =
      dtype == v1::DTYPE_FLOAT32 ? kernels::DType::kFloat32 : kernels::DType::kFloat16;
  std::string bytes(static_cast<size_t>(n) * kernels::DTypeSize(kd), '\0');
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (int64_t i = 0; i < n; ++i) kernels::StoreFromFloat(bytes.data(), kd, i, dist(rng));
  t.set_inline_data(std::move(bytes));
  return t;
}

// A tensor of `shape` in `dtype` that is a slice of registered buffer `buffer_id` at `offset`.
inline v1::Tensor SliceTensor(const std::string& buffer_id, v1::DType dtype,
                              const std::vector<int64_t>& shape, uint64_t offset) {
  v1::Tensor t;
  t.set_dtype(dtype);
  for (int64_t d : shape) t.add_shape(d);
  t.mutable_buffer()->set_buffer_id(buffer_id);
  t.mutable_buffer()->set_offset_bytes(offset);
  return t;
}

// An inline float32 tensor [values.size()] holding `values` (e.g. a run's sinks).
inline v1::Tensor FloatVector(const std::vector<float>& values) {
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_FLOAT32);
  t.add_shape(static_cast<int64_t>(values.size()));
  t.set_inline_data(
      std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float)));
  return t;
}

inline std::vector<int32_t> Allocate(Core& core, const std::string& session,
                                     const std::string& pool_id, int32_t count) {
  v1::AllocatePagesRequest request;
  request.set_pool_id(pool_id);
  request.set_count(count);
  auto response = core.AllocatePages(session, request);
  EXPECT_TRUE(response.ok()) << response.status();
  if (!response.ok()) return {};
  return {response->page_ids().begin(), response->page_ids().end()};
}

inline int64_t FreePagesOf(Core& core, const std::string& session, const std::string& pool_id) {
  v1::DescribePoolRequest request;
  request.set_pool_id(pool_id);
  auto response = core.DescribePool(session, request);
  EXPECT_TRUE(response.ok()) << response.status();
  return response.ok() ? response->pool().free_pages() : -1;
}

// `session`'s fork grant for the pool (what another session names to give it references).
inline std::string ForkGrantOf(Core& core, const std::string& session, const std::string& pool_id) {
  v1::DescribePoolRequest request;
  request.set_pool_id(pool_id);
  auto response = core.DescribePool(session, request);
  EXPECT_TRUE(response.ok()) << response.status();
  return response.ok() ? response->pool().fork_grant() : "";
}

// A plan over one request per entry of `pages`, with last_page_len and qo_len per request.
inline v1::CreatePlanRequest PlanRequest(const std::string& pool_id, v1::AttentionKind kind,
                                         int32_t num_qo_heads,
                                         const std::vector<std::vector<int32_t>>& pages,
                                         const std::vector<int32_t>& last_page_len,
                                         const std::vector<int32_t>& qo_len) {
  v1::CreatePlanRequest request;
  request.set_pool_id(pool_id);
  request.set_kind(kind);
  request.set_num_qo_heads(num_qo_heads);
  request.add_kv_indptr(0);
  for (const auto& p : pages) {
    for (int32_t page : p) request.add_kv_indices(page);
    request.add_kv_indptr(request.kv_indices_size());
  }
  for (int32_t len : last_page_len) request.add_kv_last_page_len(len);
  if (!qo_len.empty()) {
    request.add_qo_indptr(0);
    for (int32_t len : qo_len)
      request.add_qo_indptr(request.qo_indptr(request.qo_indptr_size() - 1) + len);
  }
  return request;
}

// Random fp16 K/V in every token of `pages` (full pages, in every layer of a pool of `pool`'s
// geometry) through a prefill plan's appends; the plan is deleted again.
inline void FillPages(Core& core, const std::string& session, const std::string& pool_id,
                      const std::vector<int32_t>& pages, std::mt19937& rng, const PoolSpec& pool,
                      int32_t num_qo_heads) {
  const int32_t tokens = static_cast<int32_t>(pages.size()) * pool.page_size;
  auto plan =
      core.CreatePlan(session, PlanRequest(pool_id, v1::ATTENTION_KIND_PREFILL, num_qo_heads,
                                           {pages}, {pool.page_size}, {tokens}));
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (int layer = 0; layer < pool.num_layers; ++layer) {
    v1::AppendKvRequest append;
    append.set_plan_id(plan->plan_id());
    append.set_layer(layer);
    const std::vector<int64_t> shape = {tokens, pool.num_kv_heads, pool.head_dim};
    *append.mutable_k() = RandomTensor(rng, v1::DTYPE_FLOAT16, shape);
    *append.mutable_v() = RandomTensor(rng, v1::DTYPE_FLOAT16, shape);
    ASSERT_TRUE(core.AppendKv(session, append).ok());
  }
  v1::DeletePlanRequest del;
  del.set_plan_id(plan->plan_id());
  ASSERT_TRUE(core.DeletePlan(session, del).ok());
}

// A memfd of `size` bytes mapped here, sealed against shrinking unless `seal` is false: the
// client side of a shared-memory buffer.
class TestMemfd {
 public:
  explicit TestMemfd(size_t size, bool seal = true) : size_(size) {
    fd_ = ::memfd_create("attnd-core-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(::ftruncate(fd_, static_cast<off_t>(size)), 0);
    if (seal) {
      EXPECT_EQ(::fcntl(fd_, F_ADD_SEALS, F_SEAL_SHRINK), 0);
    }
    data_ = static_cast<char*>(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0));
    EXPECT_NE(data_, MAP_FAILED);
  }
  ~TestMemfd() {
    ::munmap(data_, size_);
    ::close(fd_);
  }
  TestMemfd(const TestMemfd&) = delete;
  TestMemfd& operator=(const TestMemfd&) = delete;
  int fd() const { return fd_; }
  char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  size_t size_;
  int fd_ = -1;
  char* data_ = nullptr;
};

// A peer of the core, as a process connected to the peer socket would be.
inline Identity AddTestPeer(Core& core) {
  auto key = core.AddPeer({static_cast<int32_t>(::getpid()), ::getuid(), ::getgid()});
  EXPECT_TRUE(key.ok()) << key.status();
  auto identity = core.PeerIdentity(key.ok() ? *key : "");
  EXPECT_TRUE(identity.ok()) << identity.status();
  return identity.ok() ? *identity : Identity{};
}

// Sends (a duplicate of) `memfd` as `peer`'s descriptor; the token, or the refusal.
inline absl::StatusOr<std::string> SendFd(Core& core, const Identity& peer, int fd) {
  return core.AddPeerFd(peer.peer, ::fcntl(fd, F_DUPFD_CLOEXEC, 0));
}

// Registers `size` bytes of `memfd` in `session` (owned by `peer`): descriptor, then token.
inline absl::StatusOr<std::string> RegisterMemfd(Core& core, const std::string& session,
                                                 const Identity& peer, const TestMemfd& memfd,
                                                 uint64_t size) {
  auto token = SendFd(core, peer, memfd.fd());
  if (!token.ok()) return token.status();
  v1::RegisterBufferRequest request;
  request.mutable_shared_memory_fd()->set_fd_token(*token);
  request.set_size_bytes(size);
  auto response = core.RegisterBuffer(session, request);
  if (!response.ok()) return response.status();
  return response->buffer_id();
}

}  // namespace attnd::server::testing
