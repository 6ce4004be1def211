// GPU test of merge_states (LaunchMergeStates) against the CPU reference (cpu::MergeStates):
// random states with some empty (-inf) ones and rows where every state is empty (o = 0,
// lse = -inf expected), fp32/fp16/bf16, several head dims and state counts, s_out null or not.
// The pair form (MergeState: v_in_b, s_in_b), in place into either state, MergeStates of one
// state in place, and no states at all (v = 0, s = -inf, null inputs never read).
// Misaligned v_in, s_in, v_in_b, s_in_b, v_out and s_out, and a pair form without 2 states, are
// refused with INVALID_ARGUMENT before any launch.
//   merge_states_test [--small] [--verbose] [--seed=N]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
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

  const std::string name = absl::StrCat(dt == DType::kFloat16    ? "f16"
                                        : dt == DType::kBFloat16 ? "bf16"
                                                                 : "f32",
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

std::string DtypeTag(DType dt) {
  return dt == DType::kFloat16 ? "f16" : dt == DType::kBFloat16 ? "bf16" : "f32";
}

// Random LSEs in [-20, 20], about one in ten -inf (an empty state).
std::vector<float> RandomLse(Rng& rng, size_t n) {
  std::vector<float> s(n);
  for (float& x : s) x = rng.Int(0, 9) == 0 ? -INFINITY : rng.Uniform(-20.f, 20.f);
  return s;
}

// The pair form: (v_a, s_a) and (v_b, s_b), each [rows, heads, dim]; in_place 0: separate
// outputs, 1: into a (merge_state_in_place), 2: into b.
void RunPairCase(int32_t rows, int32_t heads, int32_t dim, DType dt, int in_place, Rng& rng,
                 ResultTable& table) {
  const size_t n = static_cast<size_t>(rows) * heads * dim,
               cells = static_cast<size_t>(rows) * heads;
  std::vector<float> va = rng.NormalVector(n), vb = rng.NormalVector(n);
  RoundTo(va, dt);
  RoundTo(vb, dt);
  std::vector<float> sa = RandomLse(rng, cells), sb = RandomLse(rng, cells);
  sa[0] = sb[0] = -INFINITY;  // row 0 head 0: both empty
  std::vector<float> ref_v(n), ref_s(cells);
  attnd::kernels::MergeStatesParams hp;
  hp.v_in = va.data();
  hp.s_in = sa.data();
  hp.v_in_b = vb.data();
  hp.s_in_b = sb.data();
  hp.v_out = ref_v.data();
  hp.s_out = ref_s.data();
  hp.dtype = DType::kFloat32;
  hp.num_rows = rows;
  hp.num_states = 2;
  hp.num_heads = heads;
  hp.head_dim = dim;
  GT_STATUS_CHECK(attnd::kernels::cpu::MergeStates(hp));

  DeviceBuffer dva = DeviceBuffer::From(EncodeAs(va, dt)),
               dvb = DeviceBuffer::From(EncodeAs(vb, dt));
  DeviceBuffer dsa = DeviceBuffer::From(sa), dsb = DeviceBuffer::From(sb);
  DeviceBuffer dout(n * ElemSize(dt)), dsout(cells * sizeof(float));
  dout.Poison();
  dsout.Poison();
  attnd::kernels::MergeStatesParams p = hp;
  p.v_in = dva.get();
  p.s_in = dsa.as<float>();
  p.v_in_b = dvb.get();
  p.s_in_b = dsb.as<float>();
  p.dtype = dt;
  const DeviceBuffer& v_target = in_place == 1 ? dva : in_place == 2 ? dvb : dout;
  const DeviceBuffer& s_target = in_place == 1 ? dsa : in_place == 2 ? dsb : dsout;
  p.v_out = v_target.get();
  p.s_out = s_target.as<float>();
  GT_STATUS_CHECK(kcuda::LaunchMergeStates(p, nullptr));
  GT_CUDA_CHECK(cudaDeviceSynchronize());

  const std::string name = absl::StrCat(DtypeTag(dt), " pair rows", rows, " H", heads, " D", dim,
                                        in_place == 1   ? " in place (a)"
                                        : in_place == 2 ? " in place (b)"
                                                        : "");
  std::vector<uint8_t> raw = v_target.Download();
  std::vector<uint8_t> unw = UnwrittenMask(raw, dt);
  table.Add(name + " v", Compare(DecodeFrom(raw, dt), ref_v, &unw), DefaultTolerance(dt));
  std::vector<uint8_t> sraw = s_target.Download();
  std::vector<uint8_t> sunw = UnwrittenMask(sraw, DType::kFloat32);
  table.Add(name + " s", Compare(DecodeFrom(sraw, DType::kFloat32), ref_s, &sunw), 1e-5);
  const std::vector<float> s_got = DecodeFrom(sraw, DType::kFloat32);
  const std::vector<float> v_got = DecodeFrom(raw, dt);
  bool empty_ok = s_got[0] == -INFINITY;
  for (int32_t d = 0; d < dim; ++d) empty_ok = empty_ok && v_got[d] == 0.f;
  table.AddCheck(name + ": both states empty -> v 0, s -inf", empty_ok,
                 empty_ok ? "ok" : "differs");
}

// MergeStates of one state, in place (v_out = v_in, s_out = s_in): the state comes back, empty
// ones as v = 0.
void OneStateInPlace(Rng& rng, ResultTable& table) {
  const int32_t rows = 17, heads = 6, dim = 128;
  const size_t n = static_cast<size_t>(rows) * heads * dim,
               cells = static_cast<size_t>(rows) * heads;
  std::vector<float> v = rng.NormalVector(n);
  RoundTo(v, DType::kBFloat16);
  std::vector<float> s = RandomLse(rng, cells);
  std::vector<float> ref_v = v;
  for (size_t c = 0; c < cells; ++c) {
    if (s[c] == -INFINITY) std::fill(ref_v.begin() + c * dim, ref_v.begin() + (c + 1) * dim, 0.f);
  }
  DeviceBuffer dv = DeviceBuffer::From(EncodeAs(v, DType::kBFloat16)), ds = DeviceBuffer::From(s);
  attnd::kernels::MergeStatesParams p;
  p.v_in = p.v_out = dv.get();
  p.s_in = p.s_out = ds.as<float>();
  p.dtype = DType::kBFloat16;
  p.num_rows = rows;
  p.num_states = 1;
  p.num_heads = heads;
  p.head_dim = dim;
  GT_STATUS_CHECK(kcuda::LaunchMergeStates(p, nullptr));
  GT_CUDA_CHECK(cudaDeviceSynchronize());
  // Weight exp(0) = 1 (to the fast exp2's error): the values come back, to rounding.
  table.Add("bf16 one state in place v",
            Compare(DecodeFrom(dv.Download(), DType::kBFloat16), ref_v), 1e-6);
  table.Add("bf16 one state in place s", Compare(ds.DownloadAs<float>(), s), 1e-6);
}

// num_states = 0: every row gets v = 0, s = -inf; the (null) inputs are never read.
void NoStates(ResultTable& table) {
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    const int32_t rows = 5, heads = 9, dim = 64;
    DeviceBuffer dout(static_cast<size_t>(rows) * heads * dim * ElemSize(dt));
    DeviceBuffer dsout(static_cast<size_t>(rows) * heads * sizeof(float));
    dout.Poison();
    dsout.Poison();
    attnd::kernels::MergeStatesParams p;
    p.v_out = dout.get();
    p.s_out = dsout.as<float>();
    p.dtype = dt;
    p.num_rows = rows;
    p.num_states = 0;
    p.num_heads = heads;
    p.head_dim = dim;
    const absl::Status st = kcuda::LaunchMergeStates(p, nullptr);
    const cudaError_t sync = cudaDeviceSynchronize();
    bool ok = st.ok() && sync == cudaSuccess;
    for (float x : DecodeFrom(dout.Download(), dt)) ok = ok && x == 0.f;
    for (float x : dsout.DownloadAs<float>()) ok = ok && x == -INFINITY;
    table.AddCheck(DtypeTag(dt) + " no states -> v 0, s -inf", ok,
                   absl::StrCat(st.ToString(), ", ", cudaGetErrorName(sync)));
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
  // The pair form: its second state's tensors are checked the same way, and it has 2 states.
  P pair = good;
  pair.v_in_b = dv.get();
  pair.s_in_b = ds.as<float>();
  const std::vector<std::pair<std::string, std::function<void(P&)>>> bad_pair = {
      {"v_in_b=0x", [&](P& p) { p.v_in_b = plus2(p.v_in_b); }},
      {"s_in_b=0x", [&](P& p) { p.s_in_b = reinterpret_cast<const float*>(plus2(p.s_in_b)); }},
      {"not num_states=3", [&](P& p) { p.num_states = 3; }},
  };
  std::vector<std::pair<P, std::string>> all;
  for (const auto& [field, corrupt] : bad) {
    P p = good;
    corrupt(p);
    all.emplace_back(p, field);
  }
  for (const auto& [field, corrupt] : bad_pair) {
    P p = pair;
    corrupt(p);
    all.emplace_back(p, field);
  }
  for (auto& [p, field] : all) {
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
  using namespace attnd::gpu_test;  // NOLINT(google-build-using-namespace): the whole test
  TestFlags flags = ParseFlags(argc, argv);
  PrintDevice();
  Rng rng(flags.seed);
  ResultTable table("merge_states_test");
  table.set_verbose(flags.verbose);
  MisalignedInputs(rng, table);
  NoStates(table);
  OneStateInPlace(rng, table);
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    for (int32_t dim : {64, 128, 256, 100}) {
      for (int in_place : {0, 1, 2}) {
        if (flags.small && (dim != 128 || in_place == 2)) continue;
        RunPairCase(flags.small ? 3 : 29, 7, dim, dt, in_place, rng, table);
      }
    }
  }
  if (!flags.small) RunPairCase(4000, 32, 128, DType::kBFloat16, 1, rng, table);
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
