// GPU test of merge_states (LaunchMergeStates) against the CPU reference (cpu::MergeStates):
// random states with some empty (-inf) ones and rows where every state is empty (o = 0,
// lse = -inf expected), fp32/fp16/bf16, several head dims and state counts, s_out null or not.
// Misaligned v_in, s_in, v_out and s_out are refused with INVALID_ARGUMENT before any launch.
//   merge_states_test [--small] [--verbose] [--seed=N]
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"

#include "absl/strings/str_cat.h"
#include "attnd/kernels/cpu_reference.h"
#include "attnd/kernels/cuda_launch.h"
#include "gpu_test_util.h"

namespace attnd::gpu_test {
namespace {

namespace kcuda = attnd::kernels::cuda;

void RunCase(int32_t rows, int32_t states, int32_t heads, int32_t dim, DType dt, bool with_s_out,
             Rng& rng, ResultTable& table) {
  std::vector<float> v = rng.NormalVector(static_cast<size_t>(rows) * states * heads * dim);
  RoundTo(v, dt);
  std::vector<float> s(static_cast<size_t>(rows) * states * heads);
  for (size_t i = 0; i < s.size(); ++i) {
    s[i] = rng.Uniform(-20.f, 20.f);
    if (rng.Int(0, 9) == 0) s[i] = -INFINITY;  // empty partition
  }
  // Row 0: every state of head 0 empty.
  for (int32_t i = 0; i < states; ++i) s[static_cast<size_t>(i) * heads] = -INFINITY;

  std::vector<float> ref_v(static_cast<size_t>(rows) * heads * dim), ref_s(rows * heads);
  attnd::kernels::MergeStatesParams hp;
  hp.v_in = v.data();
  hp.s_in = s.data();
  hp.v_out = ref_v.data();
  hp.s_out = ref_s.data();
  hp.dtype = DType::kFloat32;
  hp.num_rows = rows;
  hp.num_states = states;
  hp.num_heads = heads;
  hp.head_dim = dim;
  GT_STATUS_CHECK(attnd::kernels::cpu::MergeStates(hp));

  DeviceBuffer dv = DeviceBuffer::From(EncodeAs(v, dt));
  DeviceBuffer ds = DeviceBuffer::From(s);
  DeviceBuffer dout(ref_v.size() * ElemSize(dt));
  DeviceBuffer dsout(ref_s.size() * sizeof(float));
  dout.Poison();
  dsout.Poison();
  attnd::kernels::MergeStatesParams p = hp;
  p.v_in = dv.get();
  p.s_in = ds.as<float>();
  p.v_out = dout.get();
  p.s_out = with_s_out ? dsout.as<float>() : nullptr;
  p.dtype = dt;
  GT_STATUS_CHECK(kcuda::LaunchMergeStates(p, nullptr));
  GT_CUDA_CHECK(cudaDeviceSynchronize());

  const std::string name =
      absl::StrCat(dt == DType::kFloat16 ? "f16" : dt == DType::kBFloat16 ? "bf16" : "f32",
                   " rows", rows, " states", states, " H", heads, " D", dim);
  std::vector<uint8_t> raw = dout.Download();
  std::vector<uint8_t> unw = UnwrittenMask(raw, dt);
  table.Add(name + " v", Compare(DecodeFrom(raw, dt), ref_v, &unw), DefaultTolerance(dt));
  std::vector<uint8_t> sraw = dsout.Download();
  if (with_s_out) {
    std::vector<uint8_t> sunw = UnwrittenMask(sraw, DType::kFloat32);
    table.Add(name + " s", Compare(DecodeFrom(sraw, DType::kFloat32), ref_s, &sunw), 1e-5);
  } else {
    bool untouched = true;
    for (uint8_t x : sraw) untouched = untouched && x == 0xFF;
    table.AddCheck(name + " s_out null untouched", untouched, untouched ? "ok" : "written");
  }
}

void MisalignedInputs(Rng& rng, ResultTable& table) {
  const int32_t rows = 3, states = 2, heads = 4, dim = 64;
  DeviceBuffer dv = DeviceBuffer::From(
      EncodeAs(rng.NormalVector(rows * states * heads * dim + 8), DType::kBFloat16));
  DeviceBuffer ds = DeviceBuffer::From(rng.NormalVector(rows * states * heads + 4));
  DeviceBuffer dout(rows * heads * dim * 2 + 16), dsout(rows * heads * 4 + 16);
  attnd::kernels::MergeStatesParams good;
  good.v_in = dv.get();
  good.s_in = ds.as<float>();
  good.v_out = dout.get();
  good.s_out = dsout.as<float>();
  good.dtype = DType::kBFloat16;
  good.num_rows = rows;
  good.num_states = states;
  good.num_heads = heads;
  good.head_dim = dim;
  auto plus2 = [](const void* p) { return static_cast<char*>(const_cast<void*>(p)) + 2; };
  using P = attnd::kernels::MergeStatesParams;
  const std::vector<std::pair<std::string, std::function<void(P&)>>> bad = {
      {"v_in=0x", [&](P& p) { p.v_in = plus2(p.v_in); }},
      {"s_in=0x", [&](P& p) { p.s_in = reinterpret_cast<const float*>(plus2(p.s_in)); }},
      {"v_out=0x", [&](P& p) { p.v_out = plus2(p.v_out); }},
      {"s_out=0x", [&](P& p) { p.s_out = reinterpret_cast<float*>(plus2(p.s_out)); }},
  };
  for (const auto& [field, corrupt] : bad) {
    P p = good;
    corrupt(p);
    dout.Poison();
    const absl::Status st = kcuda::LaunchMergeStates(p, nullptr);
    const cudaError_t sync = cudaDeviceSynchronize();
    bool untouched = true;
    for (uint8_t x : dout.Download()) untouched = untouched && x == 0xFF;
    const std::string name = "merge_states refuses " + field;
    AddRefusal(table, name, st, absl::StatusCode::kInvalidArgument, field);
    table.AddCheck(name + ": nothing launched, context fine", untouched && sync == cudaSuccess,
                   cudaGetErrorName(sync));
  }
}

}  // namespace
}  // namespace attnd::gpu_test

int main(int argc, char** argv) {
  using namespace attnd::gpu_test;
  TestFlags flags = ParseFlags(argc, argv);
  PrintDevice();
  Rng rng(flags.seed);
  ResultTable table("merge_states_test");
  table.set_verbose(flags.verbose);
  MisalignedInputs(rng, table);
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    for (int32_t dim : {64, 128, 256, 100}) {
      for (int32_t states : {1, 2, 7}) {
        if (flags.small && (dim != 64 || states == 1)) continue;
        RunCase(flags.small ? 3 : 37, states, 5, dim, dt, states != 2, rng, table);
      }
    }
  }
  if (!flags.small) RunCase(3000, 3, 32, 128, DType::kBFloat16, true, rng, table);
  table.Print(stdout);
  return table.ExitCode();
}
