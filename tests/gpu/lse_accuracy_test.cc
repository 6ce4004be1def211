// GPU test of the LSE (and o) of every CUDA attention kernel with RoPE on the fly and a logits
// soft cap on peaky logits, against a float64 attention (tests/integration/reference_attention.h),
// in bf16 and fp16:
// decode on CUDA cores and on tensor cores (whole requests and split-KV with the merge pass),
// prefill, append (qo_len < kv_len) and ragged prefill, RoPE offsets up to 1e5 and theta 1e4 /
// 5e5. Bound (kernels/cuda/NUMERICS.md): |lse - ref| <= B * max(|ref|, 1) for every row and head,
// B = 2e-3 (bf16) and 5e-4 (fp16); the largest error of each kernel and dtype is printed
// ("max lse error ..." rows). o must be within the dtype's usual relative L2 bound. Outputs are
// poisoned (NaN) before each run; unused page slots hold NaN.
//   lse_accuracy_test [--small] [--verbose] [--seed=N]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "attnd/kernels/cuda_launch.h"
#include "attnd/kernels/cuda_prefill.h"
#include "../integration/reference_attention.h"
#include "gpu_test_util.h"

namespace attnd::gpu_test {
namespace {

using attnd::kernels::AttentionOptions;
using attnd::kernels::PagedAttentionParams;
using attnd::kernels::PosEncoding;
using attnd::kernels::RaggedAttentionParams;
namespace kcuda = attnd::kernels::cuda;
using Kernel = kcuda::DecodeScheduleOptions::Kernel;

enum class Kind { kDecode, kPrefillPaged, kPrefillRagged };

struct AccCase {
  std::string family;  // the row group of the "max lse error" summary
  Kind kind = Kind::kDecode;
  DType dtype = DType::kBFloat16;
  int32_t head_dim = 128;
  int32_t num_kv_heads = 2;
  int32_t group = 1;
  int32_t page_size = 16;
  std::vector<int32_t> kv_len, qo_len;  // qo_len: prefill only
  float q_std = 8.f;                    // peaky logits: |s| up to ~30
  float soft_cap = 30.f;
  float theta = 1e4f;
  bool causal = true;
  int32_t window_left = -1;
  Kernel kernel = Kernel::kAuto;  // decode
  int32_t fixed_chunk = 0;        // decode: > 0 forces split-KV
  const char* tile = nullptr;     // prefill: the plan's tile (TileOption), null = automatic
};

double LseBound(DType t) { return t == DType::kBFloat16 ? 2e-3 : 5e-4; }

// The plan's tile option named by a case (null: automatic).
kcuda::PrefillScheduleOptions::Tile TileOption(const char* tile) {
  using Tile = kcuda::PrefillScheduleOptions::Tile;
  const std::string_view t = tile != nullptr ? tile : "";
  if (t == "default") return Tile::kDefault;
  if (t == "wide") return Tile::kWide;
  if (t == "wide3") return Tile::kWide3;
  if (t == "wide64") return Tile::kWide64;
  return Tile::kAuto;
}

std::string Describe(const AccCase& c) {
  std::string s = absl::StrCat(c.family, " ", c.dtype == DType::kBFloat16 ? "bf16" : "f16", " D",
                               c.head_dim, " Hkv", c.num_kv_heads, " g", c.group);
  if (c.kind != Kind::kPrefillRagged) absl::StrAppend(&s, " ps", c.page_size);
  absl::StrAppend(&s, " kv");
  for (size_t b = 0; b < c.kv_len.size(); ++b) {
    absl::StrAppend(&s, b ? "," : "", c.kind == Kind::kDecode ? "" : absl::StrCat(c.qo_len[b], "/"),
                    c.kv_len[b]);
  }
  absl::StrAppend(&s, " cap", c.soft_cap, " theta", c.theta);
  if (!c.causal) absl::StrAppend(&s, " noncausal");
  if (c.window_left >= 0) absl::StrAppend(&s, " win", c.window_left);
  if (c.fixed_chunk > 0) absl::StrAppend(&s, " chunk", c.fixed_chunk);
  if (c.tile != nullptr) absl::StrAppend(&s, " [", c.tile, "]");
  return s;
}

// A batch of requests with dense per-request K/V ([kv_len][num_kv_heads][head_dim], the values as
// stored in 16 bits) and its float64 attention. RoPE is applied once per key and query row in
// float64 (RopeRotate) and the rotated values are kept as floats (a 2^-24 relative rounding, ~1e-4
// of the bounds checked here), so that the reference costs O(rows x keys x head_dim) instead of
// rotating every key again for every query row.
struct Problem64 {
  attnd::testing::ReferenceShape shape;
  AttentionOptions options;
  std::vector<int32_t> qo_len, kv_len, rope_offset;  // per request
  std::vector<float> q;                              // [sum qo_len][num_qo_heads][head_dim]
  std::vector<std::vector<float>> k, v;

  int64_t qo_rows() const {
    int64_t n = 0;
    for (int32_t l : qo_len) n += l;
    return n;
  }
  // o: [rows][num_qo_heads][head_dim], lse: [rows][num_qo_heads].
  void Reference(std::vector<double>* o, std::vector<double>* lse) const {
    const int hq = shape.num_qo_heads, d = shape.head_dim;
    o->assign(static_cast<size_t>(qo_rows()) * hq * d, 0.0);
    lse->assign(static_cast<size_t>(qo_rows()) * hq, 0.0);
    int64_t row = 0;
    const bool rope = options.pos_encoding == PosEncoding::kRopeLlama;
    for (size_t b = 0; b < kv_len.size(); ++b) {
      attnd::testing::ReferenceOptions ro;  // no RoPE: q and k are rotated here, before
      ro.sm_scale = options.sm_scale;
      ro.causal = options.causal;
      ro.soft_cap = options.logits_soft_cap;
      ro.window_left = options.window_left;
      attnd::testing::ReferenceOptions rot;
      rot.rope = true;
      rot.rope_theta = options.rope_theta;
      rot.rope_scale = options.rope_scale;
      // x rotated to `position` + the request's offset, in float64, stored as float.
      auto rotate = [&](const float* x, int64_t position, float* out) {
        const std::vector<double> r =
            attnd::testing::RopeRotate(x, d, static_cast<double>(position + rope_offset[b]), rot);
        for (int e = 0; e < d; ++e) out[e] = static_cast<float>(r[e]);
      };
      std::vector<float> keys = k[b];
      if (rope) {
        for (size_t at = 0; at < keys.size(); at += d) {
          rotate(&k[b][at], static_cast<int64_t>(at / d) / shape.num_kv_heads, &keys[at]);
        }
      }
      std::vector<float> q_row(static_cast<size_t>(hq) * d);
      for (int32_t i = 0; i < qo_len[b]; ++i, ++row) {
        const int32_t position = kv_len[b] - qo_len[b] + i;
        const float* src = &q[static_cast<size_t>(row) * hq * d];
        for (int32_t h = 0; h < hq; ++h) {
          if (rope) rotate(src + h * d, position, &q_row[h * d]);
          else std::copy(src + h * d, src + (h + 1) * d, &q_row[h * d]);
        }
        attnd::testing::ReferenceAttentionVariant(
            shape, q_row.data(), position, keys, v[b], kv_len[b], ro,
            &(*o)[static_cast<size_t>(row) * hq * d], &(*lse)[static_cast<size_t>(row) * hq]);
      }
    }
  }
};

// The largest relative LSE error seen per (family, dtype).
std::map<std::string, double>& MaxErrors() {
  static std::map<std::string, double> m;
  return m;
}

void RunCase(const AccCase& c, Rng& rng, ResultTable& table) {
  const std::string name = Describe(c);
  const int32_t batch = static_cast<int32_t>(c.kv_len.size());
  const int32_t d = c.head_dim, hkv = c.num_kv_heads, hq = hkv * c.group;
  const bool decode = c.kind == Kind::kDecode;
  Problem64 pb;
  pb.shape = {hq, hkv, d};
  pb.kv_len = c.kv_len;
  pb.qo_len = decode ? std::vector<int32_t>(batch, 1) : c.qo_len;
  pb.options.causal = c.causal;
  pb.options.pos_encoding = PosEncoding::kRopeLlama;
  pb.options.rope_theta = c.theta;
  pb.options.logits_soft_cap = c.soft_cap;
  pb.options.window_left = c.window_left;
  for (int32_t b = 0; b < batch; ++b) {
    // Small, medium and ~1e5 positions (where float RoPE angles lose ~1e-3 rad).
    const int32_t choice = rng.Int(0, 2);
    pb.rope_offset.push_back(choice == 0 ? rng.Int(0, 100)
                                         : choice == 1 ? rng.Int(0, 5000) : rng.Int(90000, 100000));
    std::vector<float> k = rng.NormalVector(static_cast<size_t>(c.kv_len[b]) * hkv * d);
    std::vector<float> v = rng.NormalVector(k.size());
    RoundTo(k, c.dtype);
    RoundTo(v, c.dtype);
    pb.k.push_back(std::move(k));
    pb.v.push_back(std::move(v));
  }
  pb.q = rng.NormalVector(static_cast<size_t>(pb.qo_rows()) * hq * d, c.q_std);
  RoundTo(pb.q, c.dtype);
  std::vector<double> o_ref, lse_ref;
  pb.Reference(&o_ref, &lse_ref);

  std::vector<int32_t> qo_indptr(1, 0);
  for (int32_t l : pb.qo_len) qo_indptr.push_back(qo_indptr.back() + l);
  const int64_t rows = qo_indptr.back();
  DeviceBuffer dq = DeviceBuffer::From(EncodeAs(pb.q, c.dtype));
  DeviceBuffer dout(static_cast<size_t>(rows) * hq * d * ElemSize(c.dtype));
  DeviceBuffer dlse(static_cast<size_t>(rows) * hq * sizeof(float));
  DeviceBuffer dqo = DeviceBuffer::From(qo_indptr);
  DeviceBuffer doff = DeviceBuffer::From(pb.rope_offset);
  dout.Poison();
  dlse.Poison();
  attnd::kernels::QueryOutput qo;
  qo.q = dq.get();
  qo.o = dout.get();
  qo.lse = dlse.as<float>();
  qo.q_dtype = c.dtype;
  qo.num_qo_heads = hq;
  qo.batch_size = batch;
  qo.qo_indptr = decode ? nullptr : dqo.as<int32_t>();
  AttentionOptions opt = pb.options;
  opt.rope_offsets = doff.as<int32_t>();

  // K/V on the device: paged (pages in random order, unused slots NaN) or ragged (dense rows).
  const float kNaN = std::nanf("");
  std::vector<int32_t> indptr(1, 0), indices, last_page_len, kv_row_indptr(1, 0);
  std::vector<float> pool;
  attnd::kernels::PagedKV kv;
  kv.dtype = c.dtype;
  kv.page_size = c.page_size;
  kv.num_kv_heads = hkv;
  kv.head_dim = d;
  kv.batch_size = batch;
  int32_t total_pages = 0;
  for (int32_t l : c.kv_len) total_pages += (l + c.page_size - 1) / c.page_size;
  kv.num_pages = total_pages + 2;
  kv.SetNhdStrides();
  if (c.kind != Kind::kPrefillRagged) {
    std::vector<int32_t> perm = rng.Permutation(kv.num_pages);
    pool.assign(static_cast<size_t>(kv.num_pages) * kv.page_stride, kNaN);
    int32_t next = 0;
    for (int32_t b = 0; b < batch; ++b) {
      const int32_t pages = (c.kv_len[b] + c.page_size - 1) / c.page_size;
      for (int32_t i = 0; i < pages; ++i) indices.push_back(perm[next++]);
      indptr.push_back(static_cast<int32_t>(indices.size()));
      last_page_len.push_back(pages > 0 ? c.kv_len[b] - (pages - 1) * c.page_size : 0);
      for (int32_t t = 0; t < c.kv_len[b]; ++t) {
        const int64_t page = indices[indptr[b] + t / c.page_size];
        for (int32_t h = 0; h < hkv; ++h) {
          const size_t src = (static_cast<size_t>(t) * hkv + h) * d;
          const int64_t dst = page * kv.page_stride + (t % c.page_size) * kv.token_stride +
                              h * kv.head_stride;
          std::copy(pb.k[b].begin() + src, pb.k[b].begin() + src + d, pool.begin() + dst);
          std::copy(pb.v[b].begin() + src, pb.v[b].begin() + src + d,
                    pool.begin() + dst + kv.kv_stride);
        }
      }
    }
  } else {
    for (int32_t b = 0; b < batch; ++b) {
      kv_row_indptr.push_back(kv_row_indptr.back() + c.kv_len[b]);
      pool.insert(pool.end(), pb.k[b].begin(), pb.k[b].end());
    }
    for (int32_t b = 0; b < batch; ++b) pool.insert(pool.end(), pb.v[b].begin(), pb.v[b].end());
  }
  DeviceBuffer dpool = DeviceBuffer::From(EncodeAs(pool, c.dtype));
  DeviceBuffer dindptr = DeviceBuffer::From(c.kind == Kind::kPrefillRagged ? kv_row_indptr : indptr);
  DeviceBuffer dindices = DeviceBuffer::From(indices);
  DeviceBuffer dlast = DeviceBuffer::From(last_page_len);
  kv.data = dpool.get();
  kv.indptr = dindptr.as<int32_t>();
  kv.indices = dindices.as<int32_t>();
  kv.last_page_len = dlast.as<int32_t>();

  absl::Status run;
  std::string kernel_used;
  if (decode) {
    kcuda::DecodeScheduleOptions sched;
    sched.kernel = c.kernel;
    sched.fixed_chunk_tokens = c.fixed_chunk;
    auto work = kcuda::PrepareDecode(c.kv_len, hq, hkv, d, c.page_size, sched, nullptr);
    if (SkipIfNotBuilt(table, name, work.status(), d)) return;
    GT_STATUS_CHECK(work.status());
    const auto info = kcuda::GetDecodeScheduleInfo(**work);
    kernel_used = absl::StrCat(info.tensor_cores ? " tc" : " cc",
                               info.split ? absl::StrCat(" [split ", info.num_chunks, "]") : "");
    PagedAttentionParams p;
    p.qo = qo;
    p.kv = kv;
    p.options = opt;
    run = kcuda::RunPagedDecode(**work, p, nullptr);
  } else {
    kcuda::PrefillScheduleOptions sched;
    sched.tile = TileOption(c.tile);
    auto work = kcuda::PreparePrefill(qo_indptr, c.kv_len, hq, hkv, d, sched, nullptr);
    if (SkipIfNotBuilt(table, name, work.status(), d)) return;
    GT_STATUS_CHECK(work.status());
    if (c.kind == Kind::kPrefillPaged) {
      PagedAttentionParams p;
      p.qo = qo;
      p.kv = kv;
      p.options = opt;
      run = kcuda::RunPagedPrefill(**work, p, nullptr);
    } else {
      RaggedAttentionParams p;
      p.qo = qo;
      p.kv = DenseRaggedKv(dpool.get(),
                           static_cast<const char*>(dpool.get()) +
                               static_cast<size_t>(kv_row_indptr.back()) * hkv * d *
                                   ElemSize(c.dtype),
                           c.dtype, hkv, d, batch, dindptr.as<int32_t>());
      p.options = opt;
      run = kcuda::RunRaggedPrefill(**work, p, nullptr);
    }
  }
  if (!table.AddCheck(name + kernel_used + " runs", run.ok(), std::string(run.ToString()))) return;
  GT_CUDA_CHECK(cudaDeviceSynchronize());

  const std::vector<uint8_t> lraw = dlse.Download();
  const std::vector<uint8_t> lunw = UnwrittenMask(lraw, DType::kFloat32);
  int64_t unwritten = 0;
  for (uint8_t u : lunw) unwritten += u;
  const MaxError e = MaxElementError(DecodeFrom(lraw, DType::kFloat32), lse_ref, 1.0);
  const double bound = LseBound(c.dtype);
  char detail[96];
  std::snprintf(detail, sizeof(detail), "max abs %.3e, %lld unwritten", e.abs,
                static_cast<long long>(unwritten));
  table.AddBound(name + kernel_used + " lse", unwritten == 0 ? e.rel : INFINITY, bound, detail);
  const std::string family = absl::StrCat(c.family, c.dtype == DType::kBFloat16 ? " bf16" : " f16");
  double& worst = MaxErrors()[family];
  worst = std::max(worst, unwritten == 0 ? e.rel : INFINITY);

  const std::vector<uint8_t> oraw = dout.Download();
  const std::vector<uint8_t> ounw = UnwrittenMask(oraw, c.dtype);
  std::vector<float> o_ref_f(o_ref.begin(), o_ref.end());
  table.Add(name + kernel_used + " o", Compare(DecodeFrom(oraw, c.dtype), o_ref_f, &ounw),
            DefaultTolerance(c.dtype));
}

std::vector<AccCase> Cases(bool small) {
  std::vector<AccCase> v;
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    for (int32_t hd : small ? std::vector<int32_t>{64} : std::vector<int32_t>{64, 128, 256}) {
      const std::vector<int32_t> lens =
          small ? std::vector<int32_t>{1, 7, 40} : std::vector<int32_t>{1, 7, 97, 1000};
      // Decode on CUDA cores (GQA 1 and 3) and on tensor cores (GQA 8, head_dim <= 128).
      AccCase c;
      c.dtype = dt;
      c.head_dim = hd;
      c.kv_len = lens;
      c.family = "decode cuda-cores";
      c.kernel = Kernel::kCudaCores;
      c.group = 1;
      c.page_size = 16;
      v.push_back(c);
      c.group = 3;
      c.page_size = 1;
      c.theta = 5e5f;
      c.soft_cap = 50.f;
      v.push_back(c);
      c.family = "decode split-kv";
      c.fixed_chunk = small ? 16 : 128;
      c.page_size = 16;
      v.push_back(c);
      if (hd <= 128) {
        c.family = "decode tensor-cores";
        c.kernel = Kernel::kTensorCores;
        c.group = 8;
        c.fixed_chunk = 0;
        c.theta = 1e4f;
        c.soft_cap = 30.f;
        v.push_back(c);
        c.family = "decode split-kv";
        c.fixed_chunk = small ? 16 : 256;
        c.page_size = 7;
        c.theta = 5e5f;
        v.push_back(c);
      }
      // Prefill (qo == kv), append (qo < kv), ragged non-causal with a window.
      AccCase pcase;
      pcase.kind = Kind::kPrefillPaged;
      pcase.dtype = dt;
      pcase.head_dim = hd;
      pcase.group = 4;
      pcase.family = "prefill/append";
      if (small) {
        pcase.kv_len = {1, 33};
        pcase.qo_len = {1, 33};
      } else {
        pcase.kv_len = {1, 7, 97, 300, 1000};
        pcase.qo_len = {1, 7, 97, 64, 130};
      }
      v.push_back(pcase);
      if (hd == 128 && !small) {  // a wide-tile plan run by the RoPE kernel (2 CTAs per item)
        pcase.tile = "wide64";
        pcase.soft_cap = 50.f;
        pcase.theta = 5e5f;
        v.push_back(pcase);
        pcase.tile = nullptr;
      }
      pcase.kind = Kind::kPrefillRagged;
      pcase.family = "prefill ragged";
      pcase.causal = false;
      pcase.window_left = 40;
      pcase.group = 2;
      v.push_back(pcase);
    }
  }
  return v;
}

}  // namespace
}  // namespace attnd::gpu_test

int main(int argc, char** argv) {
  using namespace attnd::gpu_test;
  const TestFlags flags = ParseFlags(argc, argv);
  PrintDevice();
  Rng rng(flags.seed);
  ResultTable table("lse_accuracy_test");
  table.set_verbose(flags.verbose);
  for (const AccCase& c : Cases(flags.small)) RunCase(c, rng, table);
  for (const auto& [family, worst] : MaxErrors()) {
    const bool bf16 = family.find("bf16") != std::string::npos;
    const double bound = bf16 ? 2e-3 : 5e-4;
    table.AddBound("max lse error " + family, worst, bound, "(|lse - ref| / max(|ref|, 1))");
  }
  table.Print(stdout);
  return table.ExitCode();
}
