// GPU test of Backend::InjectDeviceFaultForTesting on the CUDA backend. It breaks the CUDA context
// of its process on purpose, so it is a program of its own (run_all.sh runs every *_test in its
// own process): a trap kernel leaves a sticky error; the backend must record it, Health() must
// return it from then on, and every entry point (memory, streams, copies, plans, attention,
// merge, synchronisation, a second injection) must fail fast with that same status.
//   cuda_fault_test [--small] [--verbose]
// --small (run_all.sh's compute-sanitizer pass) checks the backend up to the injection and then
// skips it, with a SKIP row: memcheck reports a trapping kernel as an error by design.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "attnd/kernels/backend.h"
#include "gpu_test_util.h"

namespace attnd::gpu_test {
namespace {

using attnd::kernels::AttentionKind;
using attnd::kernels::Backend;
using attnd::kernels::PlanSpec;
using attnd::kernels::RunArgs;

bool SameStatus(const absl::Status& a, const absl::Status& b) {
  return a.code() == b.code() && a.message() == b.message();
}

int Run(const TestFlags& flags) {
  ResultTable table("cuda_fault_test");
  table.set_verbose(flags.verbose);
  auto created = attnd::kernels::CreateCudaBackend({});
  GT_STATUS_CHECK(created.status());
  Backend& be = **created;
  table.AddCheck("healthy at start", be.Health().ok(), std::string(be.Health().ToString()));

  // Everything a later call needs, made while the device works: memory, a stream, a decode plan.
  const int32_t head_dim = be.info().head_dims.front();
  const int32_t heads = 4, page_size = 16;
  const size_t row_bytes = static_cast<size_t>(heads) * head_dim * 2;
  auto layer_mem = be.Allocate(2 * page_size * row_bytes);
  auto q = be.Allocate(row_bytes);
  auto o = be.Allocate(row_bytes);
  auto stream = be.CreateStream();
  GT_STATUS_CHECK(layer_mem.status());
  GT_STATUS_CHECK(q.status());
  GT_STATUS_CHECK(o.status());
  GT_STATUS_CHECK(stream.status());
  std::vector<uint8_t> pattern(row_bytes, 0x3C);  // fp16 0x3C3C = 1.0586 in q, K and V
  std::vector<uint8_t> poison(row_bytes, 0xFF);   // NaN in o until the kernel writes it
  GT_STATUS_CHECK(be.CopyToBackend((*q)->data(), pattern.data(), row_bytes, stream->get()));
  GT_STATUS_CHECK(be.CopyToBackend((*o)->data(), poison.data(), row_bytes, stream->get()));
  std::vector<uint8_t> pool(2 * page_size * row_bytes, 0x3C);
  GT_STATUS_CHECK(be.CopyToBackend((*layer_mem)->data(), pool.data(), pool.size(), stream->get()));
  PlanSpec spec;
  spec.kind = AttentionKind::kDecode;
  spec.num_qo_heads = heads;
  spec.num_kv_heads = heads;
  spec.head_dim = head_dim;
  spec.page_size = page_size;
  spec.kv_dtype = DType::kFloat16;
  spec.kv_indptr = {0, 1};
  spec.kv_indices = {0};
  spec.kv_last_page_len = {page_size};
  spec.qo_indptr = {0, 1};
  auto plan = be.Prepare(spec, stream->get());
  GT_STATUS_CHECK(plan.status());
  RunArgs args;
  args.plan = plan->get();
  args.layer.dtype = DType::kFloat16;
  args.layer.num_pages = 1;
  args.layer.page_size = page_size;
  args.layer.num_kv_heads = heads;
  args.layer.head_dim = head_dim;
  args.layer.SetNhdStrides();
  args.layer.data = (*layer_mem)->data();
  args.q = (*q)->data();
  args.o = (*o)->data();
  args.q_dtype = DType::kFloat16;
  args.stream = stream->get();
  const absl::Status before = be.Attention(args);
  const absl::Status before_sync = be.Synchronize(stream->get());
  std::vector<uint8_t> out(row_bytes, 0);
  GT_STATUS_CHECK(be.CopyToHost(out.data(), (*o)->data(), row_bytes, stream->get()));
  GT_STATUS_CHECK(be.Synchronize(stream->get()));
  // Every value is 0x3C3C, so o (a convex combination of them) is 0x3C3C everywhere.
  bool same = true;
  for (uint8_t x : out) same = same && x == 0x3C;
  table.AddCheck("a decode run before the fault (o = V everywhere)",
                 before.ok() && before_sync.ok() && same,
                 absl::StrCat(before.ToString(), " / ", before_sync.ToString()));
  table.AddCheck("healthy before the fault", be.Health().ok(), std::string(be.Health().ToString()));

  if (flags.small) {
    table.AddSkip("InjectDeviceFaultForTesting and the sticky error",
                  "--small (compute-sanitizer run): a trapping kernel is a memcheck error by "
                  "design; the full run injects the fault");
    table.Print(stdout);
    return table.ExitCode();
  }

  const absl::Status injected = be.InjectDeviceFaultForTesting();
  table.AddCheck("InjectDeviceFaultForTesting() -> OK", injected.ok(),
                 std::string(injected.ToString()));
  const absl::Status health = be.Health();
  table.AddCheck("Health() reports the sticky error",
                 health.code() == absl::StatusCode::kInternal &&
                     std::string(health.message()).find("sticky") != std::string::npos,
                 std::string(health.ToString()));

  // Every entry point fails fast with the recorded status.
  std::vector<std::pair<std::string, absl::Status>> calls;
  calls.emplace_back("Allocate", be.Allocate(16).status());
  calls.emplace_back("CreateStream", be.CreateStream().status());
  calls.emplace_back("CopyToBackend",
                     be.CopyToBackend((*q)->data(), pattern.data(), row_bytes, stream->get()));
  calls.emplace_back("CopyToHost", be.CopyToHost(out.data(), (*o)->data(), 16, stream->get()));
  calls.emplace_back("Zero", be.Zero((*o)->data(), 16, stream->get()));
  calls.emplace_back("Synchronize(stream)", be.Synchronize(stream->get()));
  calls.emplace_back("Synchronize(device)", be.Synchronize(nullptr));
  calls.emplace_back("Prepare", be.Prepare(spec, stream->get()).status());
  calls.emplace_back("AppendKv", be.AppendKv(**plan, args.layer, (*q)->data(), (*q)->data(),
                                             args.layer.dtype, stream->get()));
  calls.emplace_back("Attention", be.Attention(args));
  attnd::kernels::MergeStatesParams merge;
  merge.v_in = (*q)->data();
  merge.s_in = static_cast<const float*>((*layer_mem)->data());
  merge.v_out = (*o)->data();
  merge.dtype = DType::kFloat16;
  merge.num_rows = 1;
  merge.num_states = 1;
  merge.num_heads = 1;
  merge.head_dim = head_dim;
  calls.emplace_back("MergeStates", be.MergeStates(merge, stream->get()));
  calls.emplace_back("CreateIpcEvent", be.CreateIpcEvent().status());
  calls.emplace_back("InjectDeviceFaultForTesting again", be.InjectDeviceFaultForTesting());
  for (const auto& [what, s] : calls) {
    table.AddCheck(what + " after the fault fails with the sticky error", SameStatus(s, health),
                   std::string(s.ToString()));
  }
  table.AddCheck("Health() still reports it", SameStatus(be.Health(), health),
                 std::string(be.Health().ToString()));
  table.Print(stdout);
  return table.ExitCode();
}

}  // namespace
}  // namespace attnd::gpu_test

int main(int argc, char** argv) {
  using namespace attnd::gpu_test;
  const TestFlags flags = ParseFlags(argc, argv);
  PrintDevice();
  return Run(flags);
}
