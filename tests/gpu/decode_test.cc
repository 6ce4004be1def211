// GPU test of the batch decode kernel (PrepareDecode + RunPagedDecode) against the CPU reference
// (attnd::kernels::cpu::PagedAttention) over awkward sizes: kv_len 1..33000, page sizes 1/16/64,
// GQA 1/3/4/8/16, batch 1..256, head_dim 64/128/256, fp16/bf16, RoPE (with offsets), soft cap,
// sliding window, custom sm_scale, LSE, forced and automatic split-KV (skewed batches: the
// load-balanced schedule, items longest first), K/V stored in another type
// than q (the other 16-bit type; fp8 e4m3 / e5m2 with per-tensor and per-KV-head scales, both
// kernels, and every finite fp8 code read back exactly through V). Pages are in random order,
// outputs are poisoned (NaN) before each run; NaN or unwritten elements never pass. Both kernels
// (CUDA cores, tensor cores) refuse misaligned q, o, lse, kv data, strides and rope offsets with
// INVALID_ARGUMENT before launching anything (o stays poisoned, the context stays usable).
// CUDA-graph-safe works (GraphReplay): captured once, replayed over changing batches.
// A head_dim trimmed from the build is a SKIP row; UNIMPLEMENTED for a built one is a FAIL.
//   decode_test [--small] [--verbose] [--seed=N]
#include <algorithm>
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

using attnd::kernels::AttentionOptions;
using attnd::kernels::PagedAttentionParams;
using attnd::kernels::PosEncoding;
namespace kcuda = attnd::kernels::cuda;

struct DecodeCase {
  std::vector<int32_t> kv_len;
  int32_t page_size = 16;
  int32_t num_kv_heads = 2;
  int32_t group = 1;
  int32_t head_dim = 128;
  DType dtype = DType::kFloat16;
  AttentionOptions options;
  bool rope_offsets = false;
  bool lse = true;
  int32_t fixed_chunk = 0;  // > 0 forces split-KV with this chunk size
  bool allow_split = true;
  kcuda::DecodeScheduleOptions::Kernel kernel = kcuda::DecodeScheduleOptions::Kernel::kAuto;
  bool sinks = false;  // attention sinks: one per query head, N(0, 2), CPU and GPU alike
  DType kv_dtype = DType::kFloat32;  // K/V storage; kFloat32 = dtype (q and o)
  bool per_head_scales = true;       // fp8 K/V: scales per KV head (else one per tensor)
  // A skewed batch: the plan must cut its long request (expect_split), or take the
  // load-balancing rule for a batch that fills the device (expect_balanced; tensor cores at
  // head_dim 128 run 2 CTAs per SM on an H100/H200, so 64 requests x 8 KV heads fill it), else
  // the row FAILs. The automatic schedule either way (items longest first).
  bool expect_split = false;
  bool expect_balanced = false;
};

DType KvDtypeOf(const DecodeCase& c) {
  return c.kv_dtype == DType::kFloat32 ? c.dtype : c.kv_dtype;
}

std::string Describe(const DecodeCase& c) {
  int32_t lo = c.kv_len[0], hi = c.kv_len[0];
  for (int32_t l : c.kv_len) lo = std::min(lo, l), hi = std::max(hi, l);
  std::string s = absl::StrCat(c.dtype == DType::kFloat16 ? "f16" : "bf16", " D", c.head_dim, " B",
                               c.kv_len.size(), " kv", lo);
  if (hi != lo) absl::StrAppend(&s, "-", hi);
  absl::StrAppend(&s, " ps", c.page_size, " Hkv", c.num_kv_heads, " g", c.group);
  if (c.options.pos_encoding == PosEncoding::kRopeLlama) {
    absl::StrAppend(&s, c.rope_offsets ? " rope+off" : " rope");
  }
  if (c.options.logits_soft_cap > 0) absl::StrAppend(&s, " cap", c.options.logits_soft_cap);
  if (c.options.window_left >= 0) absl::StrAppend(&s, " win", c.options.window_left);
  if (c.options.sm_scale != 0) absl::StrAppend(&s, " scale", c.options.sm_scale);
  if (c.fixed_chunk > 0) absl::StrAppend(&s, " chunk", c.fixed_chunk);
  if (!c.allow_split) absl::StrAppend(&s, " nosplit");
  if (c.sinks) absl::StrAppend(&s, " sinks");
  if (KvDtypeOf(c) != c.dtype) {
    absl::StrAppend(&s, " kv ", attnd::kernels::DTypeName(KvDtypeOf(c)));
    if (attnd::kernels::IsFp8(KvDtypeOf(c))) {
      absl::StrAppend(&s, c.per_head_scales ? " (head scales)" : " (tensor scale)");
    }
  }
  return s;
}

void RunCase(const DecodeCase& c, Rng& rng, ResultTable& table) {
  const int32_t batch = static_cast<int32_t>(c.kv_len.size());
  const int32_t hq = c.num_kv_heads * c.group;
  const int32_t d = c.head_dim;
  const DType kv_dtype = KvDtypeOf(c);
  HostPagedCache cache =
      MakeRandomPagedCache(rng, c.kv_len, c.page_size, c.num_kv_heads, d, kv_dtype);
  if (attnd::kernels::IsFp8(kv_dtype)) SetFp8Scales(cache, rng, c.per_head_scales);
  std::vector<float> q = rng.NormalVector(static_cast<size_t>(batch) * hq * d);
  RoundTo(q, c.dtype);
  std::vector<int32_t> offsets(batch);
  for (int32_t& o : offsets) o = c.rope_offsets ? rng.Int(0, 5000) : 0;
  // [hq] sink logits, in the units of the scaled logits: some above a row's logits, some below.
  const std::vector<float> sinks = c.sinks ? rng.NormalVector(hq, 2.f) : std::vector<float>(hq);

  // CPU reference (float32 storage of the rounded values, float32 output).
  std::vector<float> ref_o(q.size()), ref_lse(static_cast<size_t>(batch) * hq);
  {
    PagedAttentionParams p;
    p.kv = cache.HostView();
    p.qo.q = q.data();
    p.qo.o = ref_o.data();
    p.qo.lse = ref_lse.data();
    p.qo.q_dtype = DType::kFloat32;
    p.qo.num_qo_heads = hq;
    p.qo.batch_size = batch;
    p.options = c.options;
    p.options.rope_offsets = c.rope_offsets ? offsets.data() : nullptr;
    p.options.sinks = c.sinks ? sinks.data() : nullptr;
    GT_STATUS_CHECK(attnd::kernels::cpu::PagedAttention(p));
  }

  // GPU.
  DevicePagedCache dcache(cache);
  DeviceBuffer dq = DeviceBuffer::From(EncodeAs(q, c.dtype));
  DeviceBuffer doff = DeviceBuffer::From(offsets);
  DeviceBuffer dsinks = DeviceBuffer::From(sinks);
  DeviceBuffer dout(q.size() * ElemSize(c.dtype));
  DeviceBuffer dlse(ref_lse.size() * sizeof(float));
  dout.Poison();
  dlse.Poison();

  kcuda::DecodeScheduleOptions sched;
  sched.fixed_chunk_tokens = c.fixed_chunk;
  sched.allow_split = c.allow_split;
  sched.kernel = c.kernel;
  auto work = kcuda::PrepareDecode(c.kv_len, hq, c.num_kv_heads, d, c.page_size, sched, nullptr);
  if (SkipIfNotBuilt(table, Describe(c), work.status(), d)) return;
  GT_STATUS_CHECK(work.status());
  const auto info = kcuda::GetDecodeScheduleInfo(**work);

  PagedAttentionParams p;
  p.kv = dcache.view;
  p.qo.q = dq.get();
  p.qo.o = dout.get();
  p.qo.lse = c.lse ? dlse.as<float>() : nullptr;
  p.qo.q_dtype = c.dtype;
  p.qo.num_qo_heads = hq;
  p.qo.batch_size = batch;
  p.options = c.options;
  p.options.rope_offsets = c.rope_offsets ? doff.as<int32_t>() : nullptr;
  p.options.sinks = c.sinks ? dsinks.as<float>() : nullptr;
  GT_STATUS_CHECK(kcuda::RunPagedDecode(**work, p, nullptr));
  GT_CUDA_CHECK(cudaDeviceSynchronize());

  std::string name = Describe(c);
  // A tensor-core plan runs K/V of another 16-bit type on the CUDA-core kernel.
  const bool ran_tc = info.tensor_cores && (kv_dtype == c.dtype || attnd::kernels::IsFp8(kv_dtype));
  absl::StrAppend(&name, ran_tc ? " tc" : " cc");
  absl::StrAppend(&name, info.split ? absl::StrCat(" [split ", info.num_chunks, "]") : "");
  if (info.balanced) absl::StrAppend(&name, " balanced");
  if (c.expect_split || c.expect_balanced) {
    table.AddCheck(
        name + " schedule", c.expect_balanced ? info.balanced : info.split,
        absl::StrCat("expected ", c.expect_balanced ? "the balanced schedule" : "a split",
                     "; chunk_tokens ", info.chunk_tokens, ", ", info.num_chunks, " items"));
  }
  const double tol = DefaultTolerance(c.dtype);
  std::vector<uint8_t> raw = dout.Download();
  std::vector<uint8_t> unwritten = UnwrittenMask(raw, c.dtype);
  table.Add(name + " o", Compare(DecodeFrom(raw, c.dtype), ref_o, &unwritten), tol);
  if (c.lse) {
    std::vector<uint8_t> lraw = dlse.Download();
    std::vector<uint8_t> lunw = UnwrittenMask(lraw, DType::kFloat32);
    const double lse_tol = c.options.pos_encoding == PosEncoding::kRopeLlama
                               ? (c.dtype == DType::kBFloat16 ? 2e-3 : 5e-4)
                               : 1e-5;
    table.Add(name + " lse", Compare(DecodeFrom(lraw, DType::kFloat32), ref_lse, &lunw), lse_tol);
  } else {
    // lse == null must leave the buffer alone.
    std::vector<uint8_t> lraw = dlse.Download();
    bool untouched = true;
    for (uint8_t x : lraw) untouched = untouched && x == 0xFF;
    table.AddCheck(name + " lse untouched", untouched, untouched ? "ok" : "lse written");
  }
}

// Every finite fp8 code through each kernel's V path, exactly: two requests of one key each
// (softmax weight exactly 1, so o = v), whose V rows hold the 256 codes (non-finite ones as 0);
// fp16 and bf16 hold every fp8 value exactly, so o must equal the codes' values bit for bit.
void Fp8CodesExact(Rng& rng, ResultTable& table) {
  using Kernel = kcuda::DecodeScheduleOptions::Kernel;
  constexpr int32_t kD = 128;
  for (DType fp8 : {DType::kFloat8E4M3, DType::kFloat8E5M2}) {
    for (DType qt : {DType::kFloat16, DType::kBFloat16}) {
      for (Kernel kernel : {Kernel::kCudaCores, Kernel::kTensorCores}) {
        const std::vector<int32_t> kv_len = {1, 1};
        HostPagedCache cache = MakeRandomPagedCache(rng, kv_len, 1, 1, kD, fp8);
        std::vector<float> ref_o(2 * kD);
        for (int32_t b = 0; b < 2; ++b) {
          const int64_t row = cache.indices[b] * cache.view.page_stride + cache.view.kv_stride;
          for (int32_t d = 0; d < kD; ++d) {
            const uint8_t code = static_cast<uint8_t>(b * kD + d);
            float x = fp8 == DType::kFloat8E4M3 ? attnd::kernels::Fp8E4m3BitsToFloat(code)
                                                : attnd::kernels::Fp8E5m2BitsToFloat(code);
            if (!std::isfinite(x)) x = 0.f;
            cache.values[row + d] = x;
            ref_o[b * kD + d] = x;
          }
        }
        DevicePagedCache dcache(cache);
        std::vector<float> q = rng.NormalVector(2 * kD);
        RoundTo(q, qt);
        DeviceBuffer dq = DeviceBuffer::From(EncodeAs(q, qt));
        DeviceBuffer dout(q.size() * ElemSize(qt));
        dout.Poison();
        kcuda::DecodeScheduleOptions sched;
        sched.kernel = kernel;
        auto work = kcuda::PrepareDecode(kv_len, 1, 1, kD, 1, sched, nullptr);
        const std::string name =
            absl::StrCat("every ", attnd::kernels::DTypeName(fp8), " code via V, q ",
                         attnd::kernels::DTypeName(qt),
                         kernel == Kernel::kTensorCores ? " tc" : " cc", " o exact");
        if (SkipIfNotBuilt(table, name, work.status(), kD)) continue;
        GT_STATUS_CHECK(work.status());
        PagedAttentionParams p;
        p.kv = dcache.view;
        p.qo.q = dq.get();
        p.qo.o = dout.get();
        p.qo.q_dtype = qt;
        p.qo.num_qo_heads = 1;
        p.qo.batch_size = 2;
        GT_STATUS_CHECK(kcuda::RunPagedDecode(**work, p, nullptr));
        GT_CUDA_CHECK(cudaDeviceSynchronize());
        std::vector<uint8_t> raw = dout.Download();
        std::vector<uint8_t> unwritten = UnwrittenMask(raw, qt);
        table.Add(name, Compare(DecodeFrom(raw, qt), ref_o, &unwritten), 0.0);
      }
    }
  }
}

std::vector<int32_t> RandomLengths(Rng& rng, int32_t batch, int32_t lo, int32_t hi) {
  std::vector<int32_t> v(batch);
  for (int32_t& x : v) x = rng.Int(lo, hi);
  return v;
}

AttentionOptions Rope(float theta = 1e4f, float scale = 1.f) {
  AttentionOptions o;
  o.pos_encoding = PosEncoding::kRopeLlama;
  o.rope_theta = theta;
  o.rope_scale = scale;
  return o;
}

// Misaligned pointers (2 bytes past a 16-byte aligned allocation) and strides that break the
// 16-byte vectors: refused by both kernels before any launch; then the same case runs normally.
void MisalignedInputs(Rng& rng, ResultTable& table, kcuda::DecodeScheduleOptions::Kernel kernel) {
  const int32_t d = kcuda::HeadDimCompiled(128) ? 128 : kcuda::HeadDimCompiled(64) ? 64 : 0;
  const char* kname = kernel == kcuda::DecodeScheduleOptions::Kernel::kTensorCores ? "tc" : "cc";
  if (d == 0) {
    table.AddSkip(absl::StrCat("misaligned decode inputs (", kname, ")"),
                  "head_dims 64 and 128 not built");
    return;
  }
  DecodeCase c;
  c.kv_len = {5, 40};
  c.group = 4;
  c.head_dim = d;
  c.kernel = kernel;
  c.options = AttentionOptions();
  c.options.pos_encoding = PosEncoding::kRopeLlama;
  c.rope_offsets = true;
  const int32_t batch = 2, hq = c.num_kv_heads * c.group;
  const DType kv_dtype = KvDtypeOf(c);
  HostPagedCache cache =
      MakeRandomPagedCache(rng, c.kv_len, c.page_size, c.num_kv_heads, d, kv_dtype);
  if (attnd::kernels::IsFp8(kv_dtype)) SetFp8Scales(cache, rng, c.per_head_scales);
  DevicePagedCache dcache(cache);
  const size_t q_bytes = static_cast<size_t>(batch) * hq * d * 2;
  DeviceBuffer dq = DeviceBuffer::From(EncodeAs(rng.NormalVector(batch * hq * d + 8), c.dtype));
  DeviceBuffer dout(q_bytes + 16), dlse(batch * hq * 4 + 16), doff(4 * batch + 16);
  GT_CUDA_CHECK(cudaMemset(doff.get(), 0, doff.bytes()));
  kcuda::DecodeScheduleOptions sched;
  sched.kernel = kernel;
  auto work = kcuda::PrepareDecode(c.kv_len, hq, c.num_kv_heads, d, c.page_size, sched, nullptr);
  GT_STATUS_CHECK(work.status());
  PagedAttentionParams good;
  good.kv = dcache.view;
  good.qo.q = dq.get();
  good.qo.o = dout.get();
  good.qo.lse = dlse.as<float>();
  good.qo.q_dtype = c.dtype;
  good.qo.num_qo_heads = hq;
  good.qo.batch_size = batch;
  good.options = c.options;
  good.options.rope_offsets = doff.as<int32_t>();
  auto plus2 = [](const void* p) { return static_cast<char*>(const_cast<void*>(p)) + 2; };
  const std::vector<std::pair<std::string, std::function<void(PagedAttentionParams&)>>> bad = {
      {"q=0x", [&](PagedAttentionParams& p) { p.qo.q = plus2(p.qo.q); }},
      {"o=0x", [&](PagedAttentionParams& p) { p.qo.o = plus2(p.qo.o); }},
      {"lse=0x",
       [&](PagedAttentionParams& p) { p.qo.lse = reinterpret_cast<float*>(plus2(p.qo.lse)); }},
      {"kv.data=0x", [&](PagedAttentionParams& p) { p.kv.data = plus2(p.kv.data); }},
      {"kv.token_stride", [&](PagedAttentionParams& p) { p.kv.token_stride += 1; }},
      {"kv.head_stride", [&](PagedAttentionParams& p) { p.kv.head_stride += 4; }},
      {"rope_offsets=0x",
       [&](PagedAttentionParams& p) {
         p.options.rope_offsets = reinterpret_cast<const int32_t*>(plus2(p.options.rope_offsets));
       }},
  };
  for (const auto& [field, corrupt] : bad) {
    PagedAttentionParams p = good;
    corrupt(p);
    dout.Poison();
    const absl::Status st = kcuda::RunPagedDecode(**work, p, nullptr);
    const cudaError_t sync = cudaDeviceSynchronize();
    const std::vector<uint8_t> o = dout.Download();
    bool untouched = true;
    for (uint8_t x : o) untouched = untouched && x == 0xFF;
    const std::string name = absl::StrCat("decode ", kname, " D", d, " refuses ", field);
    AddRefusal(table, name, st, absl::StatusCode::kInvalidArgument, field);
    table.AddCheck(name + ": nothing launched, context fine", untouched && sync == cudaSuccess,
                   cudaGetErrorName(sync));
  }
  RunCase(c, rng, table);  // the same case, aligned: matches the CPU reference
}

// `count` requests of `short_len` and one of `long_len`, last or first.
std::vector<int32_t> SkewedLengths(int count, int32_t short_len, int32_t long_len,
                                   bool long_first) {
  std::vector<int32_t> v(count, short_len);
  v.insert(long_first ? v.begin() : v.end(), long_len);
  return v;
}

// CUDA-graph-safe decode (PrepareDecodeForGraph / UpdateDecode): one work for max_batch requests,
// two layers' RunPagedDecode captured into a CUDA graph once, then replayed over steps with other
// batches (sizes 1..max_batch, uniform and skewed, page tables rewritten in place into the same
// buffers, new q) after UpdateDecode; every step's outputs (poisoned before) against the CPU
// reference, rows past the batch still poisoned. Then refused updates (over max_batch, a zero
// length, a work not made for graphs) change nothing: a replay gives the last step again.
void GraphReplay(Rng& rng, ResultTable& table, kcuda::DecodeScheduleOptions::Kernel kernel,
                 bool small) {
  using Kernel = kcuda::DecodeScheduleOptions::Kernel;
  const bool tc = kernel == Kernel::kTensorCores;
  const int32_t max_batch = small ? 40 : 64, hkv = 4, group = tc ? 4 : 2, hq = hkv * group;
  const int32_t d = 128, ps = 16, layers = 2;
  const DType dt = tc ? DType::kFloat16 : DType::kBFloat16;
  const char* kname = tc ? "tc" : "cc";
  std::vector<std::vector<int32_t>> steps;
  if (small) {
    steps = {RandomLengths(rng, 40, 1, 300), {3000}, SkewedLengths(39, 20, 1500, false), {1, 2}};
  } else {
    steps = {RandomLengths(rng, 64, 1, 600),
             {20000},
             SkewedLengths(63, 300, 12000, false),
             RandomLengths(rng, 5, 1, 3000),
             std::vector<int32_t>(64, 700),
             SkewedLengths(20, 50, 30000, true),
             {1}};
  }
  int32_t pool_pages = 0;
  for (const auto& kv_len : steps) {
    int32_t pages = 0;
    for (int32_t l : kv_len) pages += (l + ps - 1) / ps;
    pool_pages = std::max(pool_pages, pages);
  }
  pool_pages += 5;
  // Each layer: a pool of random pages (one "request" covering the pool, replaced per step).
  std::vector<HostPagedCache> host(layers);
  std::vector<DeviceBuffer> data;
  for (int l = 0; l < layers; ++l) {
    host[l] = MakeRandomPagedCache(rng, {pool_pages * ps}, ps, hkv, d, dt, 0);
    data.push_back(DeviceBuffer::From(EncodeAs(host[l].values, dt)));
  }
  DeviceBuffer indptr((max_batch + 1) * sizeof(int32_t)), last(max_batch * sizeof(int32_t));
  DeviceBuffer indices(pool_pages * sizeof(int32_t));
  DeviceBuffer q(static_cast<size_t>(max_batch) * hq * d * ElemSize(dt));
  std::vector<DeviceBuffer> o, lse;
  for (int l = 0; l < layers; ++l) {
    o.emplace_back(q.bytes());
    lse.emplace_back(static_cast<size_t>(max_batch) * hq * sizeof(float));
  }
  std::vector<PagedAttentionParams> params(layers);
  for (int l = 0; l < layers; ++l) {
    PagedAttentionParams& p = params[l];
    p.kv = host[l].view;
    p.kv.data = data[l].get();
    p.kv.indptr = indptr.as<int32_t>();
    p.kv.indices = indices.as<int32_t>();
    p.kv.last_page_len = last.as<int32_t>();
    p.kv.batch_size = max_batch;
    p.qo.q = q.get();
    p.qo.o = o[l].get();
    p.qo.lse = lse[l].as<float>();
    p.qo.q_dtype = dt;
    p.qo.num_qo_heads = hq;
    p.qo.batch_size = max_batch;
  }
  cudaStream_t stream = nullptr;
  GT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  kcuda::DecodeScheduleOptions sched;
  sched.kernel = kernel;

  // One step's inputs: a page table over the pool (random pages) and q, written in place.
  std::vector<float> hq_vals;
  const auto write_step = [&](const std::vector<int32_t>& kv_len) {
    const std::vector<int32_t> perm = rng.Permutation(pool_pages);
    for (HostPagedCache& h : host) {
      h.kv_len = kv_len;
      h.indptr.assign(1, 0);
      h.indices.clear();
      h.last_page_len.clear();
      int32_t next = 0;
      for (int32_t len : kv_len) {
        const int32_t n = (len + ps - 1) / ps;
        for (int32_t i = 0; i < n; ++i) h.indices.push_back(perm[next++]);
        h.indptr.push_back(static_cast<int32_t>(h.indices.size()));
        h.last_page_len.push_back(len - (n - 1) * ps);
      }
      h.view.batch_size = static_cast<int32_t>(kv_len.size());
    }
    GT_CUDA_CHECK(cudaMemcpy(indptr.get(), host[0].indptr.data(), host[0].indptr.size() * 4,
                             cudaMemcpyHostToDevice));
    GT_CUDA_CHECK(cudaMemcpy(indices.get(), host[0].indices.data(), host[0].indices.size() * 4,
                             cudaMemcpyHostToDevice));
    GT_CUDA_CHECK(cudaMemcpy(last.get(), host[0].last_page_len.data(),
                             host[0].last_page_len.size() * 4, cudaMemcpyHostToDevice));
    hq_vals = rng.NormalVector(kv_len.size() * hq * d);
    RoundTo(hq_vals, dt);
    const std::vector<uint8_t> enc = EncodeAs(hq_vals, dt);
    GT_CUDA_CHECK(cudaMemcpy(q.get(), enc.data(), enc.size(), cudaMemcpyHostToDevice));
  };
  // Every layer's outputs against the CPU reference for the current step.
  const auto check = [&](const std::string& name) {
    const int32_t batch = static_cast<int32_t>(host[0].kv_len.size());
    for (int l = 0; l < layers; ++l) {
      std::vector<float> ref_o(hq_vals.size()), ref_lse(static_cast<size_t>(batch) * hq);
      PagedAttentionParams p;
      p.kv = host[l].HostView();
      p.qo.q = hq_vals.data();
      p.qo.o = ref_o.data();
      p.qo.lse = ref_lse.data();
      p.qo.q_dtype = DType::kFloat32;
      p.qo.num_qo_heads = hq;
      p.qo.batch_size = batch;
      GT_STATUS_CHECK(attnd::kernels::cpu::PagedAttention(p));
      const std::string lname = absl::StrCat(name, " layer ", l);
      std::vector<uint8_t> raw = o[l].Download();
      const size_t live = ref_o.size() * ElemSize(dt);
      const std::vector<uint8_t> tail(raw.begin() + live, raw.end());
      raw.resize(live);
      std::vector<uint8_t> unwritten = UnwrittenMask(raw, dt);
      table.Add(lname + " o", Compare(DecodeFrom(raw, dt), ref_o, &unwritten),
                DefaultTolerance(dt));
      std::vector<uint8_t> lraw = lse[l].Download();
      lraw.resize(ref_lse.size() * sizeof(float));
      std::vector<uint8_t> lunw = UnwrittenMask(lraw, DType::kFloat32);
      table.Add(lname + " lse", Compare(DecodeFrom(lraw, DType::kFloat32), ref_lse, &lunw), 1e-5);
      const bool tail_poisoned =
          std::all_of(tail.begin(), tail.end(), [](uint8_t b) { return b == 0xFF; });
      table.AddCheck(lname + " rows past the batch untouched", tail_poisoned, "");
    }
  };
  const auto poison = [&] {
    for (int l = 0; l < layers; ++l) {
      o[l].Poison();
      lse[l].Poison();
    }
  };

  write_step(steps[0]);
  auto work = kcuda::PrepareDecodeForGraph(steps[0], max_batch, hq, hkv, d, ps, sched, stream);
  GT_STATUS_CHECK(work.status());
  // Eagerly first (the kernels' one-time attribute setup happens outside the capture).
  poison();
  for (int l = 0; l < layers; ++l)
    GT_STATUS_CHECK(kcuda::RunPagedDecode(**work, params[l], stream));
  GT_CUDA_CHECK(cudaStreamSynchronize(stream));
  check(absl::StrCat("graph ", kname, " eager step 0 B", steps[0].size()));

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  GT_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int l = 0; l < layers; ++l)
    GT_STATUS_CHECK(kcuda::RunPagedDecode(**work, params[l], stream));
  GT_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  GT_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (size_t i = 0; i < steps.size(); ++i) {
    if (i > 0) write_step(steps[i]);
    GT_STATUS_CHECK(kcuda::UpdateDecode(**work, steps[i], stream));
    const auto info = kcuda::GetDecodeScheduleInfo(**work);
    poison();
    GT_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    GT_CUDA_CHECK(cudaStreamSynchronize(stream));
    check(absl::StrCat("graph ", kname, " replay step ", i, " B", steps[i].size(),
                       info.split ? absl::StrCat(" [split ", info.num_chunks, "]") : "",
                       info.balanced ? " balanced" : ""));
  }

  // Refused updates change nothing: the last step replays to the same result.
  std::vector<int32_t> too_many(max_batch + 1, 10), zero = {5, 0, 7};
  const absl::Status over = kcuda::UpdateDecode(**work, too_many, stream);
  table.AddCheck(absl::StrCat("graph ", kname, " update over max_batch refused"),
                 over.code() == absl::StatusCode::kInvalidArgument, over.ToString());
  const absl::Status zero_len = kcuda::UpdateDecode(**work, zero, stream);
  table.AddCheck(absl::StrCat("graph ", kname, " update with a zero length refused"),
                 zero_len.code() == absl::StatusCode::kInvalidArgument, zero_len.ToString());
  auto plain = kcuda::PrepareDecode(steps[0], hq, hkv, d, ps, sched, stream);
  GT_STATUS_CHECK(plain.status());
  const absl::Status not_graph = kcuda::UpdateDecode(**plain, steps[0], stream);
  table.AddCheck(absl::StrCat("graph ", kname, " update of a plain work refused"),
                 not_graph.code() == absl::StatusCode::kFailedPrecondition, not_graph.ToString());
  poison();
  GT_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  GT_CUDA_CHECK(cudaStreamSynchronize(stream));
  check(absl::StrCat("graph ", kname, " replay after refused updates"));
  GT_CUDA_CHECK(cudaGraphExecDestroy(exec));
  GT_CUDA_CHECK(cudaGraphDestroy(graph));
  plain->reset();
  work->reset();
  GT_CUDA_CHECK(cudaStreamSynchronize(stream));
  GT_CUDA_CHECK(cudaStreamDestroy(stream));
}

std::vector<DecodeCase> SmallCases() {
  std::vector<DecodeCase> v;
  DecodeCase c;
  c.kv_len = {1, 7, 40};
  c.page_size = 16;
  c.group = 4;
  v.push_back(c);
  c.fixed_chunk = 16;  // split path + merge
  c.options = Rope();
  c.rope_offsets = true;
  v.push_back(c);
  c.dtype = DType::kBFloat16;
  c.head_dim = 64;
  c.page_size = 1;
  c.options.logits_soft_cap = 20.f;
  c.options.window_left = 9;
  v.push_back(c);
  // Attention sinks: unsplit, and split-KV (the sink once, in the merge), with GQA.
  c = DecodeCase();
  c.kv_len = {1, 7, 40, 300};
  c.group = 8;
  c.sinks = true;
  v.push_back(c);
  c.fixed_chunk = 16;
  c.options.logits_soft_cap = 20.f;
  v.push_back(c);
  // K/V in another type than q: fp8 both formats (per-head and per-tensor scales; split-KV,
  // RoPE and a soft cap on one), the other 16-bit type.
  c = DecodeCase();
  c.kv_len = {1, 7, 40, 300};
  c.group = 4;
  c.kv_dtype = DType::kFloat8E4M3;
  v.push_back(c);
  c.kv_dtype = DType::kFloat8E5M2;
  c.dtype = DType::kBFloat16;
  c.per_head_scales = false;
  c.fixed_chunk = 16;
  c.options = Rope();
  c.options.logits_soft_cap = 20.f;
  v.push_back(c);
  c = DecodeCase();
  c.kv_len = {1, 7, 40, 300};
  c.group = 4;
  c.kv_dtype = DType::kBFloat16;
  v.push_back(c);
  // A skewed batch that fills the device (64 x 8 head CTAs): the balanced schedule, the long
  // request cut and run first, its partial states merged by state row.
  c = DecodeCase();
  c.kv_len = SkewedLengths(63, 32, 2048, /*long_first=*/false);
  c.num_kv_heads = 8;
  c.group = 4;
  c.expect_balanced = true;
  v.push_back(c);
  return v;
}

std::vector<DecodeCase> FullCases(Rng& rng) {
  std::vector<DecodeCase> v;
  // Lengths x page sizes x GQA, fp16 D128, two KV heads, with LSE.
  for (int32_t len : {1, 7, 97, 1000, 4096}) {
    for (int32_t ps : {1, 16, 64}) {
      for (int32_t g : {1, 4, 8}) {
        DecodeCase c;
        c.kv_len = {len, std::max(1, len - 3), len + 1};
        c.page_size = ps;
        c.group = g;
        v.push_back(c);
      }
    }
  }
  // Head dims x dtypes x options.
  for (int32_t hd : {64, 128, 256}) {
    for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
      for (int variant = 0; variant < 6; ++variant) {
        DecodeCase c;
        c.head_dim = hd;
        c.dtype = dt;
        c.kv_len = RandomLengths(rng, 5, 1, 700);
        c.page_size = variant % 2 ? 16 : 7;
        c.group = variant % 3 == 0 ? 1 : (variant % 3 == 1 ? 4 : 8);
        switch (variant) {
          case 0: break;
          case 1:
            c.options = Rope();
            c.rope_offsets = true;
            break;
          case 2: c.options.logits_soft_cap = 30.f; break;
          case 3: c.options.window_left = 31; break;
          case 4:
            c.options = Rope(5e5f, 2.f);
            c.options.logits_soft_cap = 15.f;
            c.options.window_left = 100;
            c.options.sm_scale = 0.05f;
            break;
          case 5:
            c.lse = false;
            c.fixed_chunk = 48;
            c.options.window_left = 0;
            break;
        }
        v.push_back(c);
      }
    }
  }
  // Split-KV: forced chunk sizes that are not multiples of the stage or page size.
  for (int32_t chunk : {16, 100, 1024}) {
    DecodeCase c;
    c.kv_len = {3000, 1, 250, 1025};
    c.fixed_chunk = chunk;
    c.group = 4;
    c.num_kv_heads = 4;
    c.options = Rope();
    v.push_back(c);
    c.dtype = DType::kBFloat16;
    c.options.window_left = 700;
    v.push_back(c);
  }
  // Odd GQA groups (tile padding, several tiles per KV head) and MQA.
  for (int32_t g : {2, 3, 6, 16}) {
    DecodeCase c;
    c.kv_len = RandomLengths(rng, 4, 1, 1500);
    c.group = g;
    c.num_kv_heads = g == 16 ? 1 : 2;
    c.options.logits_soft_cap = 50.f;
    v.push_back(c);
  }
  // Large batches (no split) and automatic split of small batches of long sequences.
  {
    DecodeCase c;
    c.kv_len = RandomLengths(rng, 256, 1, 2048);
    c.group = 4;
    c.num_kv_heads = 2;
    v.push_back(c);
    c.kv_len = RandomLengths(rng, 128, 1, 300);
    c.dtype = DType::kBFloat16;
    c.group = 1;
    c.num_kv_heads = 4;
    c.page_size = 64;
    v.push_back(c);
    c.kv_len = {33000};
    c.dtype = DType::kFloat16;
    c.group = 4;
    c.num_kv_heads = 8;
    c.page_size = 16;
    c.options = Rope(5e5f);
    c.rope_offsets = true;
    v.push_back(c);
    c.kv_len = {33000, 4096};
    c.dtype = DType::kBFloat16;
    c.group = 8;
    c.num_kv_heads = 2;
    c.options = AttentionOptions();
    c.options.window_left = 20000;
    c.rope_offsets = false;
    v.push_back(c);
    c.kv_len = {33000};
    c.dtype = DType::kFloat16;
    c.group = 1;
    c.num_kv_heads = 4;
    c.page_size = 64;
    c.options = AttentionOptions();
    v.push_back(c);
    c.allow_split = false;
    c.kv_len = {33000, 5};
    v.push_back(c);
  }
  // Attention sinks (gpt-oss; last, so the cases above keep their random draws): head dims x
  // dtypes, GQA (both kernels: main below), with soft cap, window and RoPE, unsplit and split-KV
  // (forced chunks and the automatic split of a long request); rows of kv_len 1 weigh the sink
  // most.
  for (int32_t hd : {64, 128, 256}) {
    for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
      for (int variant = 0; variant < 4; ++variant) {
        DecodeCase c;
        c.head_dim = hd;
        c.dtype = dt;
        c.sinks = true;
        c.kv_len = RandomLengths(rng, 6, 1, 900);
        c.kv_len[0] = 1;
        c.group = variant % 2 ? 8 : 4;
        c.num_kv_heads = 2;
        switch (variant) {
          case 0: break;
          case 1:
            c.options.logits_soft_cap = 30.f;
            c.options.window_left = 40;
            break;
          case 2:
            c.options = Rope();
            c.rope_offsets = true;
            c.fixed_chunk = 64;
            break;
          case 3:
            c.fixed_chunk = 100;
            c.options.window_left = 150;
            c.lse = variant != 3 || hd != 256;
            break;
        }
        v.push_back(c);
      }
    }
  }
  {
    DecodeCase c;
    c.kv_len = {33000, 3};  // automatic split of the long request; the short one unsplit
    c.group = 8;
    c.num_kv_heads = 2;
    c.sinks = true;
    v.push_back(c);
  }
  // K/V stored in another type than q (last, as above): fp8 e4m3 / e5m2 x q fp16 / bf16 x head
  // dims, group sizes 1..32, page sizes 1 / 3 / 16 / 64 / 256, per-head and per-tensor scales,
  // with RoPE, soft cap, window, sinks, split-KV (forced and automatic), no LSE; then the other
  // 16-bit type (CUDA cores: a tensor-core plan falls back).
  {
    const DType fp8s[] = {DType::kFloat8E4M3, DType::kFloat8E5M2};
    const int32_t groups[] = {1, 4, 8, 16, 32, 5};
    const int32_t pages[] = {1, 3, 16, 64, 256, 16};
    int n = 0;
    for (int32_t hd : {64, 128, 256}) {
      for (DType qt : {DType::kFloat16, DType::kBFloat16}) {
        for (int variant = 0; variant < 6; ++variant, ++n) {
          DecodeCase c;
          c.head_dim = hd;
          c.dtype = qt;
          c.kv_dtype = fp8s[n % 2];
          c.per_head_scales = variant % 3 != 2;
          c.kv_len = RandomLengths(rng, 5, 1, 900);
          c.group = groups[variant];
          c.num_kv_heads = c.group >= 16 ? 1 : 2;
          c.page_size = pages[(variant + hd / 64) % 6];
          switch (variant) {
            case 0: break;
            case 1:
              c.options = Rope();
              c.rope_offsets = true;
              break;
            case 2: c.options.logits_soft_cap = 30.f; break;
            case 3:
              c.options.window_left = 31;
              c.sinks = true;
              break;
            case 4:
              c.fixed_chunk = 100;
              c.lse = false;
              break;
            case 5:
              c.kv_len = {33000, 2};  // the automatic split
              c.options.sm_scale = 0.05f;
              break;
          }
          v.push_back(c);
        }
      }
    }
    for (int32_t hd : {64, 128, 256}) {
      for (DType qt : {DType::kFloat16, DType::kBFloat16}) {
        DecodeCase c;
        c.head_dim = hd;
        c.dtype = qt;
        c.kv_dtype = qt == DType::kFloat16 ? DType::kBFloat16 : DType::kFloat16;
        c.kv_len = RandomLengths(rng, 4, 1, 700);
        c.group = hd == 128 ? 8 : 1;
        c.options.logits_soft_cap = hd == 64 ? 20.f : 0.f;
        c.fixed_chunk = hd == 256 ? 64 : 0;
        v.push_back(c);
      }
    }
  }
  // Skewed batches that fill the device (the load-balancing schedule): the 63 x 512 +
  // 32768 on tensor cores (GQA-4, 8 KV heads) and on CUDA cores (MHA, 32 KV heads), the long
  // request last and first; with the variants that touch chunk edges and the merge (window, sink,
  // soft cap, RoPE), fp8 K/V, head dims 64 / 256, page sizes 1 and 64, ragged short lengths.
  {
    using Kernel = kcuda::DecodeScheduleOptions::Kernel;
    DecodeCase c;
    c.kv_len = SkewedLengths(63, 512, 32768, false);
    c.num_kv_heads = 8;
    c.group = 4;
    c.expect_balanced = true;
    v.push_back(c);  // tensor cores
    c.kernel = Kernel::kCudaCores;
    c.expect_balanced = false;
    c.expect_split = true;
    v.push_back(c);
    c = DecodeCase();
    c.kv_len = SkewedLengths(63, 512, 32768, true);
    c.num_kv_heads = 32;
    c.group = 1;
    c.dtype = DType::kBFloat16;
    c.expect_split = true;
    v.push_back(c);  // CUDA cores, MHA
    c = DecodeCase();
    c.kv_len = SkewedLengths(95, 300, 20000, false);
    for (int32_t& l : c.kv_len) l += rng.Int(0, 97);
    c.num_kv_heads = 8;
    c.group = 4;
    c.options = Rope();
    c.rope_offsets = true;
    c.options.logits_soft_cap = 20.f;
    c.sinks = true;
    c.expect_balanced = true;
    v.push_back(c);
    c.options = AttentionOptions();
    c.options.window_left = 5000;  // the long request's early chunks are empty
    c.rope_offsets = false;
    c.kv_dtype = DType::kFloat8E4M3;
    c.page_size = 64;
    v.push_back(c);
    c.kernel = Kernel::kCudaCores;
    c.expect_balanced = false;
    c.expect_split = true;
    v.push_back(c);
    c = DecodeCase();
    c.kv_len = SkewedLengths(127, 200, 12000, true);
    c.num_kv_heads = 4;
    c.group = 8;
    c.head_dim = 64;
    c.page_size = 1;
    c.kv_dtype = DType::kFloat8E5M2;
    c.dtype = DType::kBFloat16;
    c.expect_split = true;
    v.push_back(c);
    c = DecodeCase();
    c.kv_len = SkewedLengths(127, 256, 16384, false);
    c.num_kv_heads = 4;
    c.group = 2;
    c.head_dim = 256;
    c.sinks = true;
    c.expect_split = true;
    v.push_back(c);
  }
  return v;
}

}  // namespace
}  // namespace attnd::gpu_test

int main(int argc, char** argv) {
  using namespace attnd::gpu_test;
  TestFlags flags = ParseFlags(argc, argv);
  PrintDevice();
  Rng rng(flags.seed);
  ResultTable table("decode_test");
  table.set_verbose(flags.verbose);
  std::vector<DecodeCase> cases = flags.small ? SmallCases() : FullCases(rng);
  using Kernel = attnd::kernels::cuda::DecodeScheduleOptions::Kernel;
  MisalignedInputs(rng, table, Kernel::kCudaCores);
  MisalignedInputs(rng, table, Kernel::kTensorCores);
  Fp8CodesExact(rng, table);
  GraphReplay(rng, table, Kernel::kTensorCores, flags.small);
  GraphReplay(rng, table, Kernel::kCudaCores, flags.small);
  for (const DecodeCase& c : cases) {
    RunCase(c, rng, table);
    // Both kernels on every case small enough: the automatic choice above, and the other one
    // forced (tensor cores exist for head_dim 64/128).
    int64_t tokens = 0;
    for (int32_t l : c.kv_len) tokens += l;
    if (c.head_dim <= 128 && tokens <= 40000 && c.kernel == Kernel::kAuto) {
      const bool auto_tc = c.group >= 4;
      DecodeCase other = c;
      other.kernel = auto_tc ? Kernel::kCudaCores : Kernel::kTensorCores;
      // The other kernel's occupancy differs: a batch that fills the device for one may
      // under-fill it for the other (then the under-filled rule cuts the long request).
      other.expect_split = c.expect_split || c.expect_balanced;
      other.expect_balanced = false;
      RunCase(other, rng, table);
    }
  }
  table.Print(stdout);
  return table.ExitCode();
}
