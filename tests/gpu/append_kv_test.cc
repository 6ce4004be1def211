// GPU test of append_kv (LaunchAppendKv) against the CPU reference (cpu::AppendKv): new K/V rows
// of decode (one per request, with and without new_indptr) and prefill/append (many per request)
// are written into randomly ordered pages of every page size; the whole pool is compared, so a
// row written to the wrong slot, or a page that should not change, fails. Exact equality.
// Misaligned k, v, kv data, strides and new_indptr are refused with INVALID_ARGUMENT before any
// launch, and the pool is then byte-for-byte unchanged. FP8 caches: rows of fp32 / fp16 / bf16
// quantized with per-KV-head scales (values over 2^-12 .. 2^9: subnormal, normal, saturated),
// the pool compared bit for bit with the CPU reference's quantization.
//   append_kv_test [--small] [--verbose] [--seed=N]
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

struct AppendCase {
  std::vector<int32_t> kv_len;
  std::vector<int32_t> new_len;  // empty = decode with new_indptr null (one row per request)
  int32_t page_size = 16;
  int32_t num_kv_heads = 2;
  int32_t head_dim = 128;
  DType dtype = DType::kFloat16;  // the cache's
  DType rows = DType::kFloat16;   // the new rows' (fp8 caches: quantized); else = dtype
};

const char* ShortName(DType t) {
  switch (t) {
    case DType::kFloat16: return "f16";
    case DType::kBFloat16: return "bf16";
    case DType::kFloat8E4M3: return "e4m3";
    case DType::kFloat8E5M2: return "e5m2";
    default: return "f32";
  }
}

// An fp8 cache: rows of c.rows quantized by both backends onto the same fp8 bytes and scales.
void RunFp8Case(const AppendCase& c, Rng& rng, ResultTable& table) {
  const int32_t batch = static_cast<int32_t>(c.kv_len.size());
  HostPagedCache cache =
      MakeRandomPagedCache(rng, c.kv_len, c.page_size, c.num_kv_heads, c.head_dim, c.dtype);
  SetFp8Scales(cache, rng, /*per_head=*/true);
  std::vector<int32_t> new_indptr(1, 0);
  for (int32_t b = 0; b < batch; ++b) new_indptr.push_back(new_indptr.back() + c.new_len[b]);
  const size_t row = static_cast<size_t>(c.num_kv_heads) * c.head_dim;
  std::vector<float> k = rng.NormalVector(new_indptr.back() * row);
  std::vector<float> v = rng.NormalVector(new_indptr.back() * row);
  for (float& x : k) x = std::ldexp(x, rng.Int(-12, 9));
  for (float& x : v) x = std::ldexp(x, rng.Int(-12, 9));
  const std::vector<uint8_t> k_rows = EncodeAs(k, c.rows), v_rows = EncodeAs(v, c.rows);

  DevicePagedCache dcache(cache);
  std::vector<uint8_t> host_pool = EncodeAs(cache.values, c.dtype);
  attnd::kernels::AppendKvParams hp;
  hp.kv = cache.view;
  hp.kv.data = host_pool.data();
  hp.kv.indptr = cache.indptr.data();
  hp.kv.indices = cache.indices.data();
  hp.kv.last_page_len = cache.last_page_len.data();
  hp.kv.k_scale = cache.k_scale.data();
  hp.kv.v_scale = cache.v_scale.data();
  hp.k = k_rows.data();
  hp.v = v_rows.data();
  hp.new_indptr = new_indptr.data();
  hp.new_dtype = c.rows;
  GT_STATUS_CHECK(attnd::kernels::cpu::AppendKv(hp));

  DeviceBuffer dk = DeviceBuffer::From(k_rows), dv = DeviceBuffer::From(v_rows);
  DeviceBuffer dind = DeviceBuffer::From(new_indptr);
  attnd::kernels::AppendKvParams p;
  p.kv = dcache.view;
  p.k = dk.get();
  p.v = dv.get();
  p.new_indptr = dind.as<int32_t>();
  p.new_dtype = c.rows;
  GT_STATUS_CHECK(kcuda::LaunchAppendKv(p, nullptr));
  GT_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint8_t> got = dcache.data.Download();
  int64_t differing = 0;
  for (size_t i = 0; i < got.size(); ++i) differing += got[i] != host_pool[i];
  table.AddCheck(absl::StrCat(ShortName(c.dtype), " <- ", ShortName(c.rows), " quantized D",
                              c.head_dim, " B", batch, " ps", c.page_size, " Hkv", c.num_kv_heads,
                              " rows", new_indptr.back(), " pool bit for bit"),
                 differing == 0, absl::StrCat(differing, " bytes differ"));
}

void RunCase(const AppendCase& c, Rng& rng, ResultTable& table) {
  const int32_t batch = static_cast<int32_t>(c.kv_len.size());
  HostPagedCache cache =
      MakeRandomPagedCache(rng, c.kv_len, c.page_size, c.num_kv_heads, c.head_dim, c.dtype);
  std::vector<int32_t> new_indptr(1, 0);
  for (int32_t b = 0; b < batch; ++b) {
    new_indptr.push_back(new_indptr.back() + (c.new_len.empty() ? 1 : c.new_len[b]));
  }
  const size_t row = static_cast<size_t>(c.num_kv_heads) * c.head_dim;
  std::vector<float> k = rng.NormalVector(new_indptr.back() * row, 3.f);
  std::vector<float> v = rng.NormalVector(new_indptr.back() * row, 3.f);
  RoundTo(k, c.dtype);
  RoundTo(v, c.dtype);

  DevicePagedCache dcache(cache);  // uploads the values before the CPU append changes them
  attnd::kernels::AppendKvParams hp;
  hp.kv = cache.HostView();
  hp.k = k.data();
  hp.v = v.data();
  hp.new_indptr = c.new_len.empty() ? nullptr : new_indptr.data();
  hp.new_dtype = DType::kFloat32;  // the host view holds the values as float32
  GT_STATUS_CHECK(attnd::kernels::cpu::AppendKv(hp));

  DeviceBuffer dk = DeviceBuffer::From(EncodeAs(k, c.dtype));
  DeviceBuffer dv = DeviceBuffer::From(EncodeAs(v, c.dtype));
  DeviceBuffer dind = DeviceBuffer::From(new_indptr);
  attnd::kernels::AppendKvParams p;
  p.kv = dcache.view;
  p.k = dk.get();
  p.v = dv.get();
  p.new_indptr = c.new_len.empty() ? nullptr : dind.as<int32_t>();
  p.new_dtype = c.dtype;
  GT_STATUS_CHECK(kcuda::LaunchAppendKv(p, nullptr));
  GT_CUDA_CHECK(cudaDeviceSynchronize());

  std::string name =
      absl::StrCat(ShortName(c.dtype), " D", c.head_dim, " B", batch, " ps", c.page_size, " Hkv",
                   c.num_kv_heads, c.new_len.empty() ? " decode" : " rows",
                   c.new_len.empty() ? "" : absl::StrCat(new_indptr.back()));
  std::vector<float> got = DecodeFrom(dcache.data.Download(), c.dtype);
  table.Add(name + " pool", Compare(got, cache.values), 0.0);
}

void MisalignedInputs(Rng& rng, ResultTable& table) {
  const std::vector<int32_t> kv_len = {9, 30};
  HostPagedCache cache = MakeRandomPagedCache(rng, kv_len, 16, 2, 64, DType::kFloat16);
  DevicePagedCache dcache(cache);
  const std::vector<uint8_t> before = dcache.data.Download();
  DeviceBuffer dind = DeviceBuffer::From(std::vector<int32_t>{0, 3, 7, 0, 0});  // 3 + 4 new rows
  DeviceBuffer dk = DeviceBuffer::From(EncodeAs(rng.NormalVector(7 * 2 * 64 + 8), DType::kFloat16));
  DeviceBuffer dv = DeviceBuffer::From(EncodeAs(rng.NormalVector(7 * 2 * 64 + 8), DType::kFloat16));
  attnd::kernels::AppendKvParams good;
  good.kv = dcache.view;
  good.k = dk.get();
  good.v = dv.get();
  good.new_indptr = dind.as<int32_t>();
  good.new_dtype = DType::kFloat16;
  auto plus2 = [](const void* p) { return static_cast<char*>(const_cast<void*>(p)) + 2; };
  const std::vector<std::pair<std::string, std::function<void(attnd::kernels::AppendKvParams&)>>>
      bad = {
          {"k=0x", [&](attnd::kernels::AppendKvParams& p) { p.k = plus2(p.k); }},
          {"v=0x", [&](attnd::kernels::AppendKvParams& p) { p.v = plus2(p.v); }},
          {"kv.data=0x", [&](attnd::kernels::AppendKvParams& p) { p.kv.data = plus2(p.kv.data); }},
          {"kv.page_stride", [&](attnd::kernels::AppendKvParams& p) { p.kv.page_stride += 1; }},
          {"new_indptr=0x",
           [&](attnd::kernels::AppendKvParams& p) {
             p.new_indptr = reinterpret_cast<const int32_t*>(plus2(p.new_indptr));
           }},
      };
  for (const auto& [field, corrupt] : bad) {
    attnd::kernels::AppendKvParams p = good;
    corrupt(p);
    const absl::Status st = kcuda::LaunchAppendKv(p, nullptr);
    const cudaError_t sync = cudaDeviceSynchronize();
    const std::string name = "append_kv refuses " + field;
    AddRefusal(table, name, st, absl::StatusCode::kInvalidArgument, field);
    table.AddCheck(name + ": pool unchanged, context fine",
                   dcache.data.Download() == before && sync == cudaSuccess, cudaGetErrorName(sync));
  }
}

}  // namespace
}  // namespace attnd::gpu_test

int main(int argc, char** argv) {
  using namespace attnd::gpu_test;
  TestFlags flags = ParseFlags(argc, argv);
  PrintDevice();
  Rng rng(flags.seed);
  ResultTable table("append_kv_test");
  table.set_verbose(flags.verbose);
  std::vector<AppendCase> cases;
  for (int32_t ps : {1, 16, 64, 7}) {
    for (DType dt : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
      for (int32_t hd : {64, 128, 256}) {
        if (flags.small && (ps != 16 || hd != 64)) continue;
        AppendCase c;
        c.page_size = ps;
        c.dtype = dt;
        c.head_dim = hd;
        c.kv_len.resize(flags.small ? 3 : 9);
        for (int32_t& x : c.kv_len) x = rng.Int(1, 300);
        cases.push_back(c);  // decode: one new row per request, new_indptr null
        c.new_len.resize(c.kv_len.size());
        for (size_t b = 0; b < c.kv_len.size(); ++b) c.new_len[b] = rng.Int(1, c.kv_len[b]);
        c.num_kv_heads = 4;
        cases.push_back(c);  // prefill/append rows
      }
    }
  }
  if (!flags.small) {
    AppendCase c;  // one long prefill (many CTAs per request) and a large decode batch
    c.kv_len = {20000};
    c.new_len = {20000};
    c.num_kv_heads = 8;
    cases.push_back(c);
    c.kv_len.assign(512, 0);
    for (int32_t& x : c.kv_len) x = rng.Int(1, 100);
    c.new_len.clear();
    cases.push_back(c);
  }
  MisalignedInputs(rng, table);
  for (const AppendCase& c : cases) RunCase(c, rng, table);
  for (DType fp8 : {DType::kFloat8E4M3, DType::kFloat8E5M2}) {
    for (DType rows : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      for (int32_t hd : {64, 128, 256}) {
        if (flags.small && hd != 64) continue;
        AppendCase c;
        c.dtype = fp8;
        c.rows = rows;
        c.head_dim = hd;
        c.page_size = hd == 128 ? 1 : 16;
        c.num_kv_heads = 3;
        c.kv_len = {5, 40, 300};
        c.new_len = {1, 40, 17};
        RunFp8Case(c, rng, table);
      }
    }
  }
  table.Print(stdout);
  return table.ExitCode();
}
