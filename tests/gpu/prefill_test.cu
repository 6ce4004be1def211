// GPU test of the CUDA batch prefill / append kernels (RunPagedPrefill, RunRaggedPrefill) against
// the CPU reference (cpu::PagedAttention / cpu::RaggedAttention).
//
// Every case draws fresh random q/k/v (rounded to the storage dtype; the reference reads the
// same rounded values in fp32), scatters K/V over pages in random order (unused pages and the
// unused tail of each last page hold NaN, as does the padding of the ragged rows), poisons o and
// lse with 0xFF (NaN) before the run, and compares by relative L2 error. NaN, unwritten elements
// and inf mismatches (rows that see nothing must give o = 0, lse = -inf) never pass.
// Long cases check a sample of rows: each sampled causal row at position p is recomputed by the
// reference as a one-row request over the first p+1 keys (same result for a causal row).
//
// Also reruns the smaller head_dim 128 cases with each tile variant (PrefillScheduleOptions::tile
// = default, wide, wide3, wide64), and the smaller cases with split-KV forced (fixed chunks) and
// off. Misaligned q, o, lse, K/V pointers and strides are refused with
// INVALID_ARGUMENT before any launch (o stays poisoned, the context stays usable). Windows follow
// FlashInfer: window_left bounds only from below; the upper bound is the causal mask or, without
// it, the end of the sequence (non-causal + window cases, paged and ragged). A head_dim trimmed
// from the build is a SKIP row; UNIMPLEMENTED for a built one is a FAIL.
// Usage: prefill_test [--small] [--verbose] [--seed=N]     (exit status 0 = all passed)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"

#include "attnd/kernels/cpu_reference.h"
#include "attnd/kernels/cuda_prefill.h"
#include "attnd/kernels/types.h"
#include "gpu_test_util.h"

namespace {

using attnd::kernels::AttentionOptions;
using attnd::kernels::DType;
using attnd::kernels::DTypeName;
using attnd::kernels::PagedAttentionParams;
using attnd::kernels::PagedKV;
using attnd::kernels::PosEncoding;
using attnd::kernels::QueryOutput;
using attnd::kernels::RaggedAttentionParams;
using attnd::kernels::RaggedKV;
namespace gt = attnd::gpu_test;
namespace kcuda = attnd::kernels::cuda;
namespace kcpu = attnd::kernels::cpu;

struct Case {
  std::string name;
  int head_dim = 128;
  DType dtype = DType::kBFloat16;
  int num_qo_heads = 8;
  int num_kv_heads = 2;
  int page_size = 16;  // 0 = ragged K/V
  bool causal = true;
  bool rope = false;
  float soft_cap = 0.f;
  int window_left = -1;
  bool lse = true;
  float q_std = 1.f;
  std::vector<std::pair<int, int>> lens;  // (qo_len, kv_len) per request
  int sample_rows = 0;                    // > 0: check this many sampled rows (causal only)
  kcuda::PrefillScheduleOptions::Tile tile = kcuda::PrefillScheduleOptions::Tile::kAuto;
  // Split-KV: > 0 cuts every request longer than this into chunks of this many keys (rounded to
  // the tile's); allow_split = false never splits. Defaults: automatic (the planner splits a
  // grid that under-fills the device, which is most of the cases here).
  int fixed_chunk = 0;
  bool allow_split = true;
  bool sinks = false;  // attention sinks: one per query head, N(0, 2), CPU and GPU alike
};

std::string Describe(const Case& c) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%s %s hd%d h%d/%d %s%s%s%s%s%s%s", c.name.c_str(),
                DTypeName(c.dtype), c.head_dim, c.num_qo_heads, c.num_kv_heads,
                c.page_size == 0 ? "ragged" : ("ps" + std::to_string(c.page_size)).c_str(),
                c.causal ? " causal" : "", c.rope ? " rope" : "", c.soft_cap > 0 ? " cap" : "",
                c.window_left >= 0 ? " win" : "", c.lse ? " lse" : "", c.sinks ? " sinks" : "");
  return buf;
}

// Runs one case on the GPU and the CPU and records the o (and lse) comparisons.
void RunCase(const Case& c, gt::Rng& rng, gt::ResultTable& table) {
  const int B = static_cast<int>(c.lens.size());
  const int D = c.head_dim;
  const int Hq = c.num_qo_heads, Hkv = c.num_kv_heads;
  const bool paged = c.page_size > 0;
  const float kNaN = std::nanf("");

  std::vector<int32_t> qo_indptr(B + 1, 0), kv_len(B);
  for (int b = 0; b < B; ++b) {
    qo_indptr[b + 1] = qo_indptr[b] + c.lens[b].first;
    kv_len[b] = c.lens[b].second;
  }
  const int64_t qo_nnz = qo_indptr[B];

  // ---- K/V ----
  std::vector<float> kv_host;  // paged pool or ragged k followed by v (float, rounded)
  std::vector<int32_t> kv_indptr(B + 1, 0), kv_indices, last_page_len(B);
  PagedKV pkv;
  RaggedKV rkv;
  int64_t ragged_v_offset = 0;
  if (paged) {
    const int ps = c.page_size;
    std::vector<int32_t> np(B);
    int total = 0;
    for (int b = 0; b < B; ++b) {
      np[b] = (kv_len[b] + ps - 1) / ps;
      total += np[b];
    }
    const int num_pages = total + 3;  // a few pages nobody owns (NaN)
    std::vector<int32_t> perm = rng.Permutation(num_pages);
    int next = 0;
    for (int b = 0; b < B; ++b) {
      kv_indptr[b + 1] = kv_indptr[b] + np[b];
      for (int i = 0; i < np[b]; ++i) kv_indices.push_back(perm[next++]);
      last_page_len[b] = np[b] > 0 ? kv_len[b] - (np[b] - 1) * ps : 0;
    }
    pkv.dtype = c.dtype;
    pkv.num_pages = num_pages;
    pkv.page_size = ps;
    pkv.num_kv_heads = Hkv;
    pkv.head_dim = D;
    pkv.SetNhdStrides();
    pkv.batch_size = B;
    kv_host.assign(static_cast<size_t>(num_pages) * pkv.page_stride, kNaN);
    for (int b = 0; b < B; ++b) {
      for (int t = 0; t < kv_len[b]; ++t) {
        const int64_t page = kv_indices[kv_indptr[b] + t / ps];
        for (int kvi = 0; kvi < 2; ++kvi) {
          for (int h = 0; h < Hkv; ++h) {
            float* row = &kv_host[page * pkv.page_stride + kvi * pkv.kv_stride +
                                  (t % ps) * pkv.token_stride + h * pkv.head_stride];
            for (int d = 0; d < D; ++d) row[d] = rng.Normal();
          }
        }
      }
    }
  } else {
    for (int b = 0; b < B; ++b) kv_indptr[b + 1] = kv_indptr[b] + kv_len[b];
    const int64_t nnz = kv_indptr[B];
    rkv.dtype = c.dtype;
    rkv.num_kv_heads = Hkv;
    rkv.head_dim = D;
    rkv.stride_h = D;
    rkv.stride_n = static_cast<int64_t>(Hkv) * D + 8;  // padded rows (NaN padding)
    rkv.batch_size = B;
    ragged_v_offset = nnz * rkv.stride_n;
    kv_host.assign(static_cast<size_t>(2 * ragged_v_offset), kNaN);
    for (int64_t n = 0; n < nnz; ++n)
      for (int kvi = 0; kvi < 2; ++kvi)
        for (int h = 0; h < Hkv; ++h)
          for (int d = 0; d < D; ++d)
            kv_host[kvi * ragged_v_offset + n * rkv.stride_n + h * rkv.stride_h + d] = rng.Normal();
  }
  gt::RoundTo(kv_host, c.dtype);

  std::vector<float> q_host = rng.NormalVector(static_cast<size_t>(qo_nnz) * Hq * D, c.q_std);
  gt::RoundTo(q_host, c.dtype);
  std::vector<int32_t> rope_offsets(B);
  for (int b = 0; b < B; ++b) rope_offsets[b] = rng.Int(0, 100);

  AttentionOptions opt;
  opt.causal = c.causal;
  opt.pos_encoding = c.rope ? PosEncoding::kRopeLlama : PosEncoding::kNone;
  opt.rope_theta = 1e4f;
  opt.rope_scale = c.rope ? 2.f : 1.f;
  opt.logits_soft_cap = c.soft_cap;
  opt.window_left = c.window_left;
  // [Hq] sink logits (host for the CPU reference; d_sinks for the GPU run).
  const std::vector<float> sinks = c.sinks ? rng.NormalVector(Hq, 2.f) : std::vector<float>(Hq);
  opt.sinks = c.sinks ? sinks.data() : nullptr;

  // ---- GPU run ----
  gt::DeviceBuffer d_kv = gt::DeviceBuffer::From(gt::EncodeAs(kv_host, c.dtype));
  gt::DeviceBuffer d_q = gt::DeviceBuffer::From(gt::EncodeAs(q_host, c.dtype));
  gt::DeviceBuffer d_o(static_cast<size_t>(qo_nnz) * Hq * D * gt::ElemSize(c.dtype));
  gt::DeviceBuffer d_lse(static_cast<size_t>(qo_nnz) * Hq * sizeof(float));
  gt::DeviceBuffer d_qo_indptr = gt::DeviceBuffer::From(qo_indptr);
  gt::DeviceBuffer d_kv_indptr = gt::DeviceBuffer::From(kv_indptr);
  gt::DeviceBuffer d_kv_indices = gt::DeviceBuffer::From(kv_indices);
  gt::DeviceBuffer d_last = gt::DeviceBuffer::From(last_page_len);
  gt::DeviceBuffer d_rope = gt::DeviceBuffer::From(rope_offsets);
  d_o.Poison();
  d_lse.Poison();

  QueryOutput qo;
  qo.q = d_q.get();
  qo.o = d_o.get();
  qo.lse = c.lse ? d_lse.as<float>() : nullptr;
  qo.q_dtype = c.dtype;
  qo.num_qo_heads = Hq;
  qo.batch_size = B;
  qo.qo_indptr = d_qo_indptr.as<int32_t>();
  gt::DeviceBuffer d_sinks = gt::DeviceBuffer::From(sinks);
  AttentionOptions dopt = opt;
  dopt.rope_offsets = d_rope.as<int32_t>();
  dopt.sinks = c.sinks ? d_sinks.as<float>() : nullptr;

  kcuda::PrefillScheduleOptions sched;
  sched.tile = c.tile;
  sched.fixed_chunk_tokens = c.fixed_chunk;
  sched.allow_split = c.allow_split;
  auto work = kcuda::PreparePrefill(qo_indptr, kv_len, Hq, Hkv, D, sched, nullptr);
  if (gt::SkipIfNotBuilt(table, Describe(c), work.status(), D)) return;
  GT_STATUS_CHECK(work.status());
  if (paged) {
    PagedAttentionParams p;
    p.qo = qo;
    p.kv = pkv;
    p.kv.data = d_kv.get();
    p.kv.indptr = d_kv_indptr.as<int32_t>();
    p.kv.indices = d_kv_indices.as<int32_t>();
    p.kv.last_page_len = d_last.as<int32_t>();
    p.options = dopt;
    GT_STATUS_CHECK(kcuda::RunPagedPrefill(**work, p, nullptr));
  } else {
    RaggedAttentionParams p;
    p.qo = qo;
    p.kv = rkv;
    p.kv.k = d_kv.get();
    p.kv.v = static_cast<const char*>(d_kv.get()) + ragged_v_offset * gt::ElemSize(c.dtype);
    p.kv.indptr = d_kv_indptr.as<int32_t>();
    p.options = dopt;
    GT_STATUS_CHECK(kcuda::RunRaggedPrefill(**work, p, nullptr));
  }
  GT_CUDA_CHECK(cudaGetLastError());
  GT_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint8_t> o_raw = d_o.Download();
  const std::vector<float> o_got = gt::DecodeFrom(o_raw, c.dtype);
  const std::vector<uint8_t> o_unwritten = gt::UnwrittenMask(o_raw, c.dtype);
  const std::vector<uint8_t> lse_raw = d_lse.Download();
  const std::vector<float> lse_got = gt::DecodeFrom(lse_raw, DType::kFloat32);
  const std::vector<uint8_t> lse_unwritten = gt::UnwrittenMask(lse_raw, DType::kFloat32);

  // ---- CPU reference (fp32 copies of the same rounded values) ----
  std::vector<float> o_ref(o_got.size(), 0.f), lse_ref(lse_got.size(), 0.f);
  std::vector<uint8_t> skip_o, skip_lse;  // sampled mode: rows not checked
  const float* kv_f = kv_host.data();

  auto cpu_paged = [&](const int32_t* indptr, const int32_t* indices, const int32_t* last,
                       int batch, const float* q, const int32_t* qo_ind, float* o, float* lse,
                       const int32_t* offs) {
    PagedAttentionParams p;
    p.kv = pkv;
    p.kv.dtype = DType::kFloat32;
    p.kv.data = const_cast<float*>(kv_f);
    p.kv.batch_size = batch;
    p.kv.indptr = indptr;
    p.kv.indices = indices;
    p.kv.last_page_len = last;
    p.qo.q = q;
    p.qo.o = o;
    p.qo.lse = lse;
    p.qo.q_dtype = DType::kFloat32;
    p.qo.num_qo_heads = Hq;
    p.qo.batch_size = batch;
    p.qo.qo_indptr = qo_ind;
    p.options = opt;
    p.options.rope_offsets = offs;
    GT_STATUS_CHECK(kcpu::PagedAttention(p));
  };
  auto cpu_ragged = [&](const float* k, const float* v, const int32_t* indptr, int batch,
                        const float* q, const int32_t* qo_ind, float* o, float* lse,
                        const int32_t* offs) {
    RaggedAttentionParams p;
    p.kv = rkv;
    p.kv.dtype = DType::kFloat32;
    p.kv.k = k;
    p.kv.v = v;
    p.kv.batch_size = batch;
    p.kv.indptr = indptr;
    p.qo.q = q;
    p.qo.o = o;
    p.qo.lse = lse;
    p.qo.q_dtype = DType::kFloat32;
    p.qo.num_qo_heads = Hq;
    p.qo.batch_size = batch;
    p.qo.qo_indptr = qo_ind;
    p.options = opt;
    p.options.rope_offsets = offs;
    GT_STATUS_CHECK(kcpu::RaggedAttention(p));
  };

  if (c.sample_rows == 0) {
    if (paged) {
      cpu_paged(kv_indptr.data(), kv_indices.data(), last_page_len.data(), B, q_host.data(),
                qo_indptr.data(), o_ref.data(), lse_ref.data(), rope_offsets.data());
    } else {
      cpu_ragged(kv_f, kv_f + ragged_v_offset, kv_indptr.data(), B, q_host.data(), qo_indptr.data(),
                 o_ref.data(), lse_ref.data(), rope_offsets.data());
    }
  } else {
    skip_o.assign(o_got.size(), 1);
    skip_lse.assign(lse_got.size(), 1);
    for (int b = 0; b < B; ++b) {
      const int qo_len = c.lens[b].first;
      if (qo_len == 0) continue;
      std::vector<int> rows = {0, qo_len - 1};
      for (int s = 0; s < c.sample_rows; ++s) rows.push_back(rng.Int(0, qo_len - 1));
      for (int i : rows) {
        const int64_t gi = qo_indptr[b] + i;
        const int pos = kv_len[b] - qo_len + i;
        if (pos < 0) continue;  // sees nothing; not representable as a truncated request
        const int32_t one_qo[2] = {0, 1};
        const float* q = &q_host[gi * Hq * D];
        float* o = &o_ref[gi * Hq * D];
        float* lse = &lse_ref[gi * Hq];
        if (paged) {
          const int ps = c.page_size;
          const int32_t ind[2] = {0, (pos + 1 + ps - 1) / ps};
          const int32_t last[1] = {pos % ps + 1};
          cpu_paged(ind, &kv_indices[kv_indptr[b]], last, 1, q, one_qo, o, lse, &rope_offsets[b]);
        } else {
          const int32_t ind[2] = {0, pos + 1};
          const int64_t base = static_cast<int64_t>(kv_indptr[b]) * rkv.stride_n;
          cpu_ragged(kv_f + base, kv_f + ragged_v_offset + base, ind, 1, q, one_qo, o, lse,
                     &rope_offsets[b]);
        }
        std::fill(skip_o.begin() + gi * Hq * D, skip_o.begin() + (gi + 1) * Hq * D, 0);
        std::fill(skip_lse.begin() + gi * Hq, skip_lse.begin() + (gi + 1) * Hq, 0);
      }
    }
  }

  const bool bf16 = c.dtype == DType::kBFloat16;
  const double o_tol = (bf16 ? 1.2e-2 : 2e-3) * (c.rope ? 1.5 : 1.0);
  const double lse_tol = (bf16 ? 5e-3 : 1e-3) * (c.rope ? 1.5 : 1.0);
  // The kernel that ran (the plan's; RoPE runs take the FA2 RoPE kernel): "sm90" rows are the
  // wgmma kernel's.
  const std::string name =
      Describe(c) + " {" + (c.rope ? "fa2-rope" : kcuda::PrefillKernelName(**work)) + "}";
  const bool sampled = c.sample_rows > 0;
  table.Add(name + " o", gt::Compare(o_got, o_ref, &o_unwritten, sampled ? &skip_o : nullptr),
            o_tol);
  if (sampled) {
    // Every element of o must still be written and finite, sampled or not.
    gt::Comparison all;
    for (size_t i = 0; i < o_got.size(); ++i) {
      ++all.count;
      all.nan += std::isnan(o_got[i]) ? 1 : 0;
      all.unwritten += o_unwritten[i];
    }
    table.Add(name + " o all written", all, 0.0);
  }
  if (c.lse) {
    table.Add(name + " lse",
              gt::Compare(lse_got, lse_ref, &lse_unwritten, sampled ? &skip_lse : nullptr),
              lse_tol);
  }
}

// Mixed-length batch: requests with random (qo_len <= kv_len), including prefill (qo == kv),
// single-row append, and an empty request.
std::vector<std::pair<int, int>> MixedBatch(gt::Rng& rng, int batch, int max_kv) {
  std::vector<std::pair<int, int>> lens;
  for (int b = 0; b < batch; ++b) {
    const int kv = rng.Int(1, max_kv);
    int qo;
    switch (b % 4) {
      case 0: qo = kv; break;
      case 1: qo = 1; break;
      default: qo = rng.Int(1, kv); break;
    }
    lens.push_back({qo, kv});
  }
  if (batch >= 3) lens[2] = {0, 0};  // an empty request (no pages)
  return lens;
}

// Attention sinks (gpt-oss) on every kernel: head_dim 128 and 64 paged (sm90 on H100/H200, and
// each FA2 tile and the split-KV chunks through main's reruns), ragged with soft cap and window,
// RoPE (the FA2 RoPE kernel), GQA 8, and rows that see no key (o = 0, lse = sink).
void AddSinkCases(std::vector<Case>& cases) {
  for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
    cases.push_back({.name = "sinks gqa8",
                     .head_dim = 128,
                     .dtype = dt,
                     .num_qo_heads = 16,
                     .num_kv_heads = 2,
                     .lens = {{70, 300}, {1, 1}, {33, 33}},
                     .sinks = true});
    cases.push_back({.name = "sinks noncausal",
                     .head_dim = 64,
                     .dtype = dt,
                     .num_qo_heads = 8,
                     .num_kv_heads = 2,
                     .page_size = 7,
                     .causal = false,
                     .lens = {{20, 200}, {5, 9}},
                     .sinks = true});
    cases.push_back({.name = "sinks ragged cap win",
                     .head_dim = 128,
                     .dtype = dt,
                     .page_size = 0,
                     .soft_cap = 10.f,
                     .window_left = 30,
                     .q_std = 2.f,
                     .lens = {{60, 250}, {8, 8}},
                     .sinks = true});
    cases.push_back({.name = "sinks rope",
                     .head_dim = 128,
                     .dtype = dt,
                     .rope = true,
                     .lens = {{40, 140}},
                     .sinks = true});
    cases.push_back({.name = "sinks qo>kv (rows see nothing)",
                     .head_dim = 64,
                     .dtype = dt,
                     .num_qo_heads = 4,
                     .num_kv_heads = 1,
                     .lens = {{20, 5}, {3, 1}},
                     .sinks = true});
    cases.push_back({.name = "sinks hd256",
                     .head_dim = 256,
                     .dtype = dt,
                     .num_qo_heads = 4,
                     .num_kv_heads = 2,
                     .lens = {{50, 120}},
                     .sinks = true});
  }
}

std::vector<Case> BuildCases(gt::Rng& rng, bool small) {
  std::vector<Case> cases;
  const DType dtypes[2] = {DType::kFloat16, DType::kBFloat16};
  if (small) {
    for (DType dt : dtypes) {
      Case a{.name = "prefill kv97",
             .head_dim = 128,
             .dtype = dt,
             .page_size = 16,
             .lens = {{97, 97}}};
      cases.push_back(a);
      Case b{.name = "append rope",
             .head_dim = 128,
             .dtype = dt,
             .num_qo_heads = 4,
             .num_kv_heads = 1,
             .page_size = 1,
             .rope = true,
             .lens = {{13, 70}, {1, 5}}};
      cases.push_back(b);
      Case r{.name = "ragged cap win",
             .head_dim = 64,
             .dtype = dt,
             .page_size = 0,
             .soft_cap = 5.f,
             .window_left = 20,
             .q_std = 3.f,
             .lens = {{40, 90}}};
      cases.push_back(r);
      Case w{.name = "noncausal",
             .head_dim = 256,
             .dtype = dt,
             .num_qo_heads = 2,
             .num_kv_heads = 2,
             .page_size = 64,
             .causal = false,
             .lens = {{20, 75}}};
      cases.push_back(w);
      Case nw{.name = "noncausal window",
              .head_dim = 64,
              .dtype = dt,
              .num_qo_heads = 4,
              .num_kv_heads = 2,
              .page_size = 16,
              .causal = false,
              .window_left = 5,
              .lens = {{12, 40}}};
      cases.push_back(nw);
    }
    AddSinkCases(cases);  // last: the cases above keep their random draws
    return cases;
  }
  const int head_dims[3] = {64, 128, 256};
  for (DType dt : dtypes) {
    for (int hd : head_dims) {
      cases.push_back({.name = "kv1",
                       .head_dim = hd,
                       .dtype = dt,
                       .num_qo_heads = 2,
                       .num_kv_heads = 2,
                       .page_size = 1,
                       .lens = {{1, 1}}});
      cases.push_back({.name = "prefill kv7",
                       .head_dim = hd,
                       .dtype = dt,
                       .page_size = 16,
                       .lse = false,
                       .lens = {{7, 7}}});
      cases.push_back({.name = "prefill kv97",
                       .head_dim = hd,
                       .dtype = dt,
                       .num_qo_heads = 8,
                       .num_kv_heads = 1,
                       .page_size = 0,
                       .lens = {{97, 97}}});
      cases.push_back({.name = "append 97/1000",
                       .head_dim = hd,
                       .dtype = dt,
                       .page_size = 64,
                       .rope = true,
                       .lens = {{97, 1000}}});
      cases.push_back({.name = "noncausal 300/1000",
                       .head_dim = hd,
                       .dtype = dt,
                       .num_qo_heads = 4,
                       .num_kv_heads = 4,
                       .page_size = 16,
                       .causal = false,
                       .lens = {{300, 1000}}});
      cases.push_back({.name = "mixed b16",
                       .head_dim = hd,
                       .dtype = dt,
                       .page_size = 16,
                       .rope = true,
                       .lens = MixedBatch(rng, 16, 600)});
      cases.push_back({.name = "cap+window",
                       .head_dim = hd,
                       .dtype = dt,
                       .page_size = 16,
                       .soft_cap = 5.f,
                       .window_left = 128,
                       .q_std = 3.f,
                       .lens = {{500, 500}, {33, 800}}});
      cases.push_back({.name = "window noncausal",
                       .head_dim = hd,
                       .dtype = dt,
                       .num_qo_heads = 8,
                       .num_kv_heads = 1,
                       .page_size = 0,
                       .causal = false,
                       .window_left = 64,
                       .lens = {{200, 700}, {1, 50}}});
      // Paged, non-causal, window: rows see [p - window_left, kv_len), also keys after p.
      cases.push_back({.name = "window noncausal paged",
                       .head_dim = hd,
                       .dtype = dt,
                       .num_qo_heads = 8,
                       .num_kv_heads = 2,
                       .page_size = 16,
                       .causal = false,
                       .rope = true,
                       .soft_cap = 20.f,
                       .window_left = 30,
                       .q_std = 2.f,
                       .lens = {{90, 400}, {7, 7}, {60, 61}}});
    }
    // head_dim 128 only: bigger and odder cases.
    cases.push_back({.name = "prefill kv4096",
                     .head_dim = 128,
                     .dtype = dt,
                     .page_size = 16,
                     .lens = {{4096, 4096}}});
    cases.push_back({.name = "append 128/4096 b4",
                     .head_dim = 128,
                     .dtype = dt,
                     .num_qo_heads = 4,
                     .num_kv_heads = 4,
                     .page_size = 1,
                     .rope = true,
                     .lens = {{128, 4096}, {128, 4000}, {128, 130}, {128, 2049}}});
    cases.push_back({.name = "mixed b9 ps64 gqa8",
                     .head_dim = 128,
                     .dtype = dt,
                     .num_qo_heads = 16,
                     .num_kv_heads = 2,
                     .page_size = 64,
                     .lens = MixedBatch(rng, 9, 1500)});
    cases.push_back({.name = "qo>kv (rows see nothing)",
                     .head_dim = 128,
                     .dtype = dt,
                     .page_size = 16,
                     .lens = {{5, 3}, {70, 40}}});
    cases.push_back({.name = "long kv32768 sampled",
                     .head_dim = 128,
                     .dtype = dt,
                     .num_qo_heads = 8,
                     .num_kv_heads = 2,
                     .page_size = 16,
                     .rope = dt == DType::kBFloat16,
                     .lens = {{32768, 32768}},
                     .sample_rows = 24});
    cases.push_back({.name = "long ragged append sampled",
                     .head_dim = 128,
                     .dtype = dt,
                     .num_qo_heads = 4,
                     .num_kv_heads = 1,
                     .page_size = 0,
                     .window_left = 3000,
                     .lens = {{6000, 20000}},
                     .sample_rows = 24});
  }
  AddSinkCases(cases);
  return cases;
}

// Errors come back as statuses, never aborts.
void CheckErrors(gt::ResultTable& table) {
  const std::vector<int32_t> qo = {0, 4}, kv = {4};
  auto bad_hd = kcuda::PreparePrefill(qo, kv, 4, 4, 96, nullptr);
  table.AddCheck("PreparePrefill head_dim 96 -> error", !bad_hd.ok(),
                 bad_hd.ok() ? "ok?" : bad_hd.status().ToString());
  auto bad_heads = kcuda::PreparePrefill(qo, kv, 6, 4, 128, nullptr);
  table.AddCheck("PreparePrefill heads 6/4 -> error", !bad_heads.ok(),
                 bad_heads.ok() ? "ok?" : bad_heads.status().ToString());
  auto work = kcuda::PreparePrefill(qo, kv, 4, 4, 128, nullptr);
  if (gt::SkipIfNotBuilt(table, "PreparePrefill head_dim 128", work.status(), 128)) return;
  GT_STATUS_CHECK(work.status());
  RaggedAttentionParams p;
  p.qo.q_dtype = DType::kFloat32;
  p.qo.num_qo_heads = 4;
  p.qo.batch_size = 1;
  p.kv.dtype = DType::kFloat32;
  p.kv.num_kv_heads = 4;
  p.kv.head_dim = 128;
  p.kv.batch_size = 1;
  auto st = kcuda::RunRaggedPrefill(**work, p, nullptr);
  table.AddCheck("RunRaggedPrefill fp32 -> error", !st.ok(), st.ToString());
}

// Misaligned pointers (2 bytes past a 16-byte aligned allocation) and strides that break the
// 16-byte vectors, paged and ragged: refused before any launch, o untouched, no CUDA error.
void MisalignedInputs(gt::Rng& rng, gt::ResultTable& table) {
  const int D = kcuda::HeadDimCompiled(128) ? 128 : kcuda::HeadDimCompiled(64) ? 64 : 0;
  if (D == 0) {
    table.AddSkip("misaligned prefill inputs", "head_dims 64 and 128 not built");
    return;
  }
  const int Hq = 4, Hkv = 2, B = 1, L = 37;
  const DType dt = DType::kBFloat16;
  const std::vector<int32_t> qo_indptr = {0, L}, kv_len = {L};
  gt::HostPagedCache cache = gt::MakeRandomPagedCache(rng, kv_len, 16, Hkv, D, dt);
  gt::DevicePagedCache dcache(cache);
  gt::DeviceBuffer dq = gt::DeviceBuffer::From(gt::EncodeAs(rng.NormalVector(L * Hq * D + 8), dt));
  gt::DeviceBuffer dout(static_cast<size_t>(L) * Hq * D * 2 + 16), dlse(L * Hq * 4 + 16);
  gt::DeviceBuffer dqo = gt::DeviceBuffer::From(qo_indptr);
  const std::vector<int32_t> rows = {0, L};
  gt::DeviceBuffer drows = gt::DeviceBuffer::From(rows);
  gt::DeviceBuffer dk = gt::DeviceBuffer::From(gt::EncodeAs(rng.NormalVector(L * Hkv * D + 8), dt));
  gt::DeviceBuffer dv = gt::DeviceBuffer::From(gt::EncodeAs(rng.NormalVector(L * Hkv * D + 8), dt));
  auto work = kcuda::PreparePrefill(qo_indptr, kv_len, Hq, Hkv, D, nullptr);
  GT_STATUS_CHECK(work.status());
  QueryOutput qo;
  qo.q = dq.get();
  qo.o = dout.get();
  qo.lse = dlse.as<float>();
  qo.q_dtype = dt;
  qo.num_qo_heads = Hq;
  qo.batch_size = B;
  qo.qo_indptr = dqo.as<int32_t>();
  PagedAttentionParams paged;
  paged.qo = qo;
  paged.kv = dcache.view;
  paged.options.causal = true;
  RaggedAttentionParams ragged;
  ragged.qo = qo;
  ragged.kv = gt::DenseRaggedKv(dk.get(), dv.get(), dt, Hkv, D, B, drows.as<int32_t>());
  ragged.options.causal = true;
  auto plus2 = [](const void* p) { return static_cast<char*>(const_cast<void*>(p)) + 2; };
  auto check = [&](const std::string& name, const std::string& field, auto run) {
    dout.Poison();
    const absl::Status st = run();
    const cudaError_t sync = cudaDeviceSynchronize();
    bool untouched = true;
    for (uint8_t x : dout.Download()) untouched = untouched && x == 0xFF;
    gt::AddRefusal(table, name, st, absl::StatusCode::kInvalidArgument, field);
    table.AddCheck(name + ": nothing launched, context fine", untouched && sync == cudaSuccess,
                   cudaGetErrorName(sync));
  };
  const std::vector<std::pair<std::string, std::function<void(QueryOutput&)>>> bad_qo = {
      {"q=0x", [&](QueryOutput& o) { o.q = plus2(o.q); }},
      {"o=0x", [&](QueryOutput& o) { o.o = plus2(o.o); }},
      {"lse=0x", [&](QueryOutput& o) { o.lse = reinterpret_cast<float*>(plus2(o.lse)); }},
  };
  for (const auto& [field, corrupt] : bad_qo) {
    PagedAttentionParams p = paged;
    corrupt(p.qo);
    check("paged prefill refuses " + field, field,
          [&] { return kcuda::RunPagedPrefill(**work, p, nullptr); });
    RaggedAttentionParams r = ragged;
    corrupt(r.qo);
    check("ragged prefill refuses " + field, field,
          [&] { return kcuda::RunRaggedPrefill(**work, r, nullptr); });
  }
  {
    PagedAttentionParams p = paged;
    p.kv.data = plus2(p.kv.data);
    check("paged prefill refuses kv.data=0x", "kv.data=0x",
          [&] { return kcuda::RunPagedPrefill(**work, p, nullptr); });
    p = paged;
    p.kv.kv_stride += 1;
    check("paged prefill refuses kv.kv_stride", "kv.kv_stride",
          [&] { return kcuda::RunPagedPrefill(**work, p, nullptr); });
    RaggedAttentionParams r = ragged;
    r.kv.k = plus2(r.kv.k);
    check("ragged prefill refuses kv.k=0x", "kv.k=0x",
          [&] { return kcuda::RunRaggedPrefill(**work, r, nullptr); });
    r = ragged;
    r.kv.v = plus2(r.kv.v);
    check("ragged prefill refuses kv.v=0x", "kv.v=0x",
          [&] { return kcuda::RunRaggedPrefill(**work, r, nullptr); });
    r = ragged;
    r.kv.stride_n += 2;
    check("ragged prefill refuses kv.stride_n", "kv.stride_n",
          [&] { return kcuda::RunRaggedPrefill(**work, r, nullptr); });
  }
}

// On a compute capability 9.0 device the automatic plan at head_dim 64 and 128 takes the sm90
// kernel (else the rows above would test only the FA2 kernels there), and 256 the FA2 one.
void AutoPicksTheSm90KernelOnSm90(gt::ResultTable& table) {
  int dev = 0, major = 0, minor = 0;
  GT_CUDA_CHECK(cudaGetDevice(&dev));
  GT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  GT_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  const bool sm90 = major == 9 && minor == 0;
  const std::vector<int32_t> qo_indptr = {0, 300}, kv_len = {300};
  for (int hd : {64, 128, 256}) {
    const std::string name = "auto plan kernel at hd" + std::to_string(hd);
    if (!kcuda::HeadDimCompiled(hd)) {
      table.AddSkip(name, "head_dim not built");
      continue;
    }
    auto work = kcuda::PreparePrefill(qo_indptr, kv_len, 8, 2, hd, nullptr);
    GT_STATUS_CHECK(work.status());
    const std::string got = kcuda::PrefillKernelName(**work);
    const std::string want =
        sm90 && hd != 256 ? "sm90" : (hd == 128 ? "fa2-wide64" : "fa2-default");
    table.AddCheck(name, got == want, "got " + got + ", want " + want);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const gt::TestFlags flags = gt::ParseFlags(argc, argv);
  gt::PrintDevice();
  gt::Rng rng(flags.seed);
  gt::ResultTable table("prefill");
  table.set_verbose(flags.verbose);
  CheckErrors(table);
  MisalignedInputs(rng, table);
  AutoPicksTheSm90KernelOnSm90(table);
  const std::vector<Case> cases = BuildCases(rng, flags.small);
  for (const Case& c : cases) RunCase(c, rng, table);
  // The other tile variants (planning/prefill_tiling.h) on the smaller cases: the FA2-class tiles
  // at head_dim 128 (and the default one at 64), which kAuto above does not pick on an sm_90
  // device, and the sm90 kernel named explicitly (so whichever is the default, all run). Every
  // row names the kernel that ran ({...}).
  using Tile = kcuda::PrefillScheduleOptions::Tile;
  const std::pair<const char*, Tile> variants[] = {{"default", Tile::kDefault},
                                                   {"wide", Tile::kWide},
                                                   {"wide3", Tile::kWide3},
                                                   {"wide64", Tile::kWide64},
                                                   {"sm90", Tile::kHopper}};
  for (const auto& [variant, tile] : variants) {
    for (Case c : cases) {
      int64_t keys = 0;
      for (const auto& l : c.lens) keys += l.second;
      const bool at_dim = c.head_dim == 128 ||
                          (c.head_dim == 64 && (tile == Tile::kDefault || tile == Tile::kHopper));
      if (!at_dim || c.sample_rows > 0 || keys > 5000) continue;
      c.name += std::string(" [") + variant + "]";
      c.tile = tile;
      RunCase(c, rng, table);
    }
  }
  // Split-KV (planning/prefill_tiling.h): the smaller cases with fixed 64- and 192-key chunks
  // (many chunks, chunks past a causal row's end, windows, RoPE, GQA, both layouts: every
  // partial state merged), and with splitting off (the automatic schedule above splits most of
  // them: the unsplit path).
  const std::pair<const char*, int> splits[] = {
      {"split64", 64}, {"split192", 192}, {"nosplit", -1}};
  for (const auto& [label, chunk] : splits) {
    for (Case c : cases) {
      int64_t keys = 0;
      for (const auto& l : c.lens) keys += l.second;
      if (c.sample_rows > 0 || keys > 20000) continue;
      c.name += std::string(" [") + label + "]";
      if (chunk > 0)
        c.fixed_chunk = chunk;
      else
        c.allow_split = false;
      RunCase(c, rng, table);
    }
  }
  table.Print(stdout);
  return table.ExitCode();
}
