// GPU test of the CUDA Backend (CreateCudaBackend) against the CPU backend (CreateCpuBackend):
// the same calls with the same bytes on both (Allocate, CopyToBackend, Prepare, Attention with
// k_new/v_new appended first, rope_offsets_host, LSE, MergeStates, CopyToHost) for decode and
// prefill/append plans; outputs and the KV pool after the append are compared. Many plans
// created and deleted back to back without synchronisation (PlanReuse; outputs poisoned, every
// element checked). Plus the backend's error paths: out-of-memory -> RESOURCE_EXHAUSTED, bad IPC
// handles, health; misaligned q, o, lse, k_new, v_new and layer data refused with
// INVALID_ARGUMENT by every kernel's run (decode on CUDA cores and on tensor cores, prefill,
// append + attention in one Run, AppendKv, MergeStates), with the cache byte-for-byte unchanged,
// Health() OK and a normal run matching the CPU backend afterwards; non-causal prefill with a
// window (FlashInfer semantics), sinks, cascade plans and custom masks (CustomMasks) against the
// CPU backend; plans updated in place across many steps (streamed page-table updates,
// PlanUpdates: Backend::UpdatePlan with batches and tables that grow and shrink, no
// synchronisation between steps) against the CPU backend preparing each step's plan anew.
//   cuda_backend_test [--small] [--verbose] [--seed=N]
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "attnd/kernels/backend.h"
#include "attnd/kernels/cascade.h"
#include "attnd/kernels/custom_mask.h"
#include "gpu_test_util.h"

namespace attnd::gpu_test {
namespace {

using attnd::kernels::AttentionKind;
using attnd::kernels::Backend;
using attnd::kernels::BackendMemory;
using attnd::kernels::DTypeName;
using attnd::kernels::PagedKV;
using attnd::kernels::PlanSpec;
using attnd::kernels::PosEncoding;
using attnd::kernels::RunArgs;

// The head_dim of the tests: 128, or the first compiled one of a trimmed build.
int32_t TestHeadDim() {
  for (int32_t d : {128, 64, 256}) {
    if (attnd::kernels::cuda::HeadDimCompiled(d)) return d;
  }
  return 0;
}

// Inputs of one attention step, identical for both backends.
struct Step {
  AttentionKind kind = AttentionKind::kDecode;
  DType dtype = DType::kFloat16;     // q and o
  DType kv_dtype = DType::kFloat16;  // the pool, k_new and v_new (MakeStepOf: dtype; WithKvDtype)
  // FP8 pools: the layer's [num_kv_heads] dequantization scales of K and V, or empty (1).
  std::vector<float> k_scale, v_scale;
  // k_new / v_new's type when not kv_dtype (fp32 / fp16 / bf16 quantized onto an fp8 pool).
  std::optional<DType> kv_new_dtype;
  int32_t num_layers = 2, layer = 1;
  int32_t num_kv_heads = 2, group = 4, head_dim = TestHeadDim(), page_size = 16;
  std::vector<int32_t> kv_len, qo_len;
  std::vector<int32_t> indptr, indices, last_page_len, qo_indptr, rope_offsets;
  int32_t num_pages = 0;
  std::vector<uint8_t> pool, q, k_new, v_new;  // raw bytes: q in dtype, the others in kv_dtype
  bool causal = true;
  bool rope = true;
  int32_t window_left = -1;
  float soft_cap = 0.f;
  std::vector<float> sinks;  // [num_kv_heads * group] attention sinks, or empty: none
  std::vector<attnd::kernels::CascadeLevel> levels;  // cascade levels (MakeCascadeStep), or none
  attnd::kernels::CustomMaskImage mask;              // the plan's custom mask (SetMask), or none
};

struct StepOutput {
  absl::Status status;  // of the Attention call
  std::vector<uint8_t> o, lse, pool;
};

// What RunStep spoils on purpose: a pointer 2 bytes past its (16-byte aligned) allocation, an
// option the kernels refuse, or a layer with fewer pages than the plan uses.
enum class Bad { kNone, kQ, kO, kLse, kKNew, kVNew, kLayerData, kRopeTheta, kFewPages };
struct BadCase {
  Bad bad;
  const char* what;   // for the row name
  const char* field;  // must appear in the error message
};
constexpr BadCase kBadCases[] = {
    {Bad::kQ, "q misaligned", "q=0x"},
    {Bad::kO, "o misaligned", "o=0x"},
    {Bad::kLse, "lse misaligned", "lse=0x"},
    {Bad::kKNew, "k_new misaligned", "k=0x"},
    {Bad::kVNew, "v_new misaligned", "v=0x"},
    {Bad::kLayerData, "layer data misaligned", "kv.data=0x"},
    {Bad::kRopeTheta, "rope_theta -1", "rope_theta"},
    {Bad::kFewPages, "layer with too few pages", "outside the layer"},
};

template <typename T>
T Unwrap(absl::StatusOr<T> s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s failed: %s\n", what, std::string(s.status().ToString()).c_str());
    std::exit(2);
  }
  return std::move(*s);
}

// A step over requests of these lengths (random pages and values).
Step MakeStepOf(Rng& rng, AttentionKind kind, DType dtype, std::vector<int32_t> kv_len,
                std::vector<int32_t> qo_len, int32_t group, int32_t page_size = 16,
                int32_t head_dim = TestHeadDim()) {
  Step s;
  s.page_size = page_size;
  s.head_dim = head_dim;
  s.kind = kind;
  s.dtype = dtype;
  s.kv_dtype = dtype;
  s.group = group;
  s.kv_len = std::move(kv_len);
  s.qo_len = std::move(qo_len);
  const int32_t batch = static_cast<int32_t>(s.kv_len.size());
  HostPagedCache layout = MakeRandomPagedCache(rng, s.kv_len, s.page_size, s.num_kv_heads,
                                               s.head_dim, dtype, /*extra_pages=*/5);
  s.indptr = layout.indptr;
  s.indices = layout.indices;
  s.last_page_len = layout.last_page_len;
  s.num_pages = layout.view.num_pages;
  s.qo_indptr.push_back(0);
  for (int32_t l : s.qo_len) s.qo_indptr.push_back(s.qo_indptr.back() + l);
  for (int32_t b = 0; b < batch; ++b) s.rope_offsets.push_back(rng.Int(0, 100));
  const size_t layer_elems = static_cast<size_t>(layout.view.page_stride) * s.num_pages;
  std::vector<float> pool = rng.NormalVector(layer_elems * s.num_layers);
  s.pool = EncodeAs(pool, dtype);
  const size_t rows = s.qo_indptr.back();
  const int32_t hq = s.num_kv_heads * s.group;
  s.q = EncodeAs(rng.NormalVector(rows * hq * s.head_dim), dtype);
  s.k_new = EncodeAs(rng.NormalVector(rows * s.num_kv_heads * s.head_dim), dtype);
  s.v_new = EncodeAs(rng.NormalVector(rows * s.num_kv_heads * s.head_dim), dtype);
  return s;
}

Step MakeStep(Rng& rng, AttentionKind kind, DType dtype, int32_t batch, int32_t max_kv,
              int32_t group = 4) {
  std::vector<int32_t> kv_len, qo_len;
  for (int32_t b = 0; b < batch; ++b) {
    const int32_t kv = rng.Int(1, max_kv);
    kv_len.push_back(kv);
    qo_len.push_back(kind == AttentionKind::kDecode ? 1 : rng.Int(1, std::min(kv, 200)));
  }
  return MakeStepOf(rng, kind, dtype, std::move(kv_len), std::move(qo_len), group);
}

// The step with its pool and new rows stored as kv_dtype (fp8: values spread over 2^-12 .. 4 as
// in MakeRandomPagedCache, with per-KV-head scales when per_head, else one per tensor); the new
// rows in `rows` instead when set (fp32 / fp16 / bf16 quantized onto an fp8 pool: spread over
// 2^-12 .. 2^9 then, so that some saturate).
Step WithKvDtype(Rng& rng, Step s, DType kv_dtype, bool per_head = true,
                 std::optional<DType> rows = std::nullopt) {
  const auto recode = [&](std::vector<uint8_t>& bytes, DType to, int max_exp) {
    std::vector<float> x = DecodeFrom(bytes, s.kv_dtype);
    if (attnd::kernels::IsFp8(kv_dtype)) {
      for (float& v : x) v = std::ldexp(v, rng.Int(-12, max_exp));
    }
    bytes = EncodeAs(x, to);
  };
  recode(s.pool, kv_dtype, 1);
  recode(s.k_new, rows.value_or(kv_dtype), rows ? 9 : 1);
  recode(s.v_new, rows.value_or(kv_dtype), rows ? 9 : 1);
  s.kv_dtype = kv_dtype;
  s.kv_new_dtype = rows;
  s.k_scale.clear();
  s.v_scale.clear();
  if (attnd::kernels::IsFp8(kv_dtype)) {
    for (int32_t h = 0; h < s.num_kv_heads; ++h) {
      s.k_scale.push_back(per_head || h == 0 ? std::exp2(rng.Uniform(-2.f, 2.f)) : s.k_scale[0]);
      s.v_scale.push_back(per_head || h == 0 ? std::exp2(rng.Uniform(-2.f, 2.f)) : s.v_scale[0]);
    }
  }
  return s;
}

// A cascade step (attnd/kernels/cascade.h): levels[l] lists each group's (requests, prefix
// length), outermost level first; own_len each request's own keys. The pool holds the prefixes
// as requests of no query rows before the real ones; their tables become the levels, the rest
// the plan's own table. No RoPE (refused on cascade plans).
Step MakeCascadeStep(Rng& rng, AttentionKind kind, DType dtype,
                     const std::vector<std::vector<std::pair<int32_t, int32_t>>>& levels,
                     const std::vector<int32_t>& own_len, int32_t group) {
  std::vector<int32_t> kv_len, qo_len;
  for (const auto& level : levels) {
    for (const auto& [requests, prefix] : level) {
      kv_len.push_back(prefix);
      qo_len.push_back(0);
    }
  }
  const size_t segments = kv_len.size();
  for (const int32_t own : own_len) {
    kv_len.push_back(own);
    qo_len.push_back(kind == AttentionKind::kDecode ? 1 : rng.Int(1, std::min(own, 200)));
  }
  Step s = MakeStepOf(rng, kind, dtype, kv_len, qo_len, group);
  s.rope = false;
  const std::vector<int32_t> indptr = s.indptr, indices = s.indices, last = s.last_page_len,
                             qo_indptr = s.qo_indptr;
  // Entries [first, end) of the whole table, rebased.
  const auto table = [&](size_t first, size_t end, std::vector<int32_t>& out_indptr,
                         std::vector<int32_t>& out_indices, std::vector<int32_t>& out_last) {
    out_indptr = {0};
    out_indices.clear();
    out_last.clear();
    for (size_t i = first; i < end; ++i) {
      out_indices.insert(out_indices.end(), indices.begin() + indptr[i],
                         indices.begin() + indptr[i + 1]);
      out_indptr.push_back(static_cast<int32_t>(out_indices.size()));
      out_last.push_back(last[i]);
    }
  };
  table(segments, kv_len.size(), s.indptr, s.indices, s.last_page_len);
  s.qo_indptr.assign(qo_indptr.begin() + static_cast<std::ptrdiff_t>(segments), qo_indptr.end());
  s.kv_len.assign(kv_len.begin() + static_cast<std::ptrdiff_t>(segments), kv_len.end());
  s.qo_len.assign(qo_len.begin() + static_cast<std::ptrdiff_t>(segments), qo_len.end());
  s.rope_offsets.resize(own_len.size());
  size_t segment = 0;
  for (const auto& level : levels) {
    attnd::kernels::CascadeLevel& out = s.levels.emplace_back();
    table(segment, segment + level.size(), out.kv_indptr, out.kv_indices, out.kv_last_page_len);
    out.qo_indptr = {0};
    size_t request = 0;
    for (const auto& group_of : level) {
      request += static_cast<size_t>(group_of.first);
      out.qo_indptr.push_back(s.qo_indptr[request]);
    }
    segment += level.size();
  }
  return s;
}

// The step's page table as a plan, and layer `layer` of a pool of its layers at `pool`.
PlanSpec SpecOf(const Step& s) {
  PlanSpec spec;
  spec.kind = s.kind;
  spec.num_qo_heads = s.num_kv_heads * s.group;
  spec.num_kv_heads = s.num_kv_heads;
  spec.head_dim = s.head_dim;
  spec.page_size = s.page_size;
  spec.kv_dtype = s.kv_dtype;
  spec.kv_indptr = s.indptr;
  spec.kv_indices = s.indices;
  spec.kv_last_page_len = s.last_page_len;
  spec.qo_indptr = s.qo_indptr;
  spec.cascade_levels = s.levels;
  spec.custom_mask = s.mask;
  return spec;
}
PagedKV LayerOf(const Step& s, void* pool, int32_t layer_index) {
  PagedKV layer;
  layer.dtype = s.kv_dtype;
  layer.num_pages = s.num_pages;
  layer.page_size = s.page_size;
  layer.num_kv_heads = s.num_kv_heads;
  layer.head_dim = s.head_dim;
  layer.SetNhdStrides();
  layer.data = static_cast<char*>(pool) + static_cast<size_t>(layer_index) * layer.page_stride *
                                              s.num_pages * ElemSize(s.kv_dtype);
  return layer;
}

// Runs the step through the Backend interface only. Every buffer has 16 bytes of slack, so that
// `bad` can move a pointer 2 bytes past its 16-byte aligned start.
StepOutput RunStep(Backend& be, const Step& s, Bad bad = Bad::kNone) {
  auto stream = Unwrap(be.CreateStream(), "CreateStream");
  const size_t es = ElemSize(s.dtype);
  constexpr size_t kSlack = 16;
  auto pool = Unwrap(be.Allocate(s.pool.size() + kSlack), "Allocate pool");
  auto q = Unwrap(be.Allocate(s.q.size() + kSlack), "Allocate q");
  auto kn = Unwrap(be.Allocate(s.k_new.size() + kSlack), "Allocate k_new");
  auto vn = Unwrap(be.Allocate(s.v_new.size() + kSlack), "Allocate v_new");
  const int32_t hq = s.num_kv_heads * s.group;
  const size_t rows = s.qo_indptr.back();
  auto o = Unwrap(be.Allocate(rows * hq * s.head_dim * es + kSlack), "Allocate o");
  auto lse = Unwrap(be.Allocate(rows * hq * sizeof(float) + kSlack), "Allocate lse");
  auto sinks = Unwrap(be.Allocate(s.sinks.size() * sizeof(float) + kSlack), "Allocate sinks");
  auto scales = Unwrap(be.Allocate(2 * s.k_scale.size() * sizeof(float) + kSlack), "Allocate");
  auto at = [&](const std::unique_ptr<BackendMemory>& m, Bad which) {
    return static_cast<char*>(m->data()) + (bad == which ? 2 : 0);
  };
  char* const pool_base = at(pool, Bad::kLayerData);
  GT_STATUS_CHECK(be.CopyToBackend(pool_base, s.pool.data(), s.pool.size(), stream.get()));
  GT_STATUS_CHECK(be.CopyToBackend(at(q, Bad::kQ), s.q.data(), s.q.size(), stream.get()));
  GT_STATUS_CHECK(
      be.CopyToBackend(at(kn, Bad::kKNew), s.k_new.data(), s.k_new.size(), stream.get()));
  GT_STATUS_CHECK(
      be.CopyToBackend(at(vn, Bad::kVNew), s.v_new.data(), s.v_new.size(), stream.get()));
  std::vector<uint8_t> poison_o(rows * hq * s.head_dim * es, 0xFF);
  std::vector<uint8_t> poison_lse(rows * hq * sizeof(float), 0xFF);
  GT_STATUS_CHECK(be.CopyToBackend(at(o, Bad::kO), poison_o.data(), poison_o.size(), stream.get()));
  GT_STATUS_CHECK(
      be.CopyToBackend(at(lse, Bad::kLse), poison_lse.data(), poison_lse.size(), stream.get()));
  if (!s.sinks.empty()) {
    GT_STATUS_CHECK(be.CopyToBackend(sinks->data(), s.sinks.data(), s.sinks.size() * sizeof(float),
                                     stream.get()));
  }

  if (!s.k_scale.empty()) {
    std::vector<float> table = s.k_scale;
    table.insert(table.end(), s.v_scale.begin(), s.v_scale.end());
    GT_STATUS_CHECK(
        be.CopyToBackend(scales->data(), table.data(), table.size() * sizeof(float), stream.get()));
  }

  auto plan = Unwrap(be.Prepare(SpecOf(s), stream.get()), "Prepare");
  PagedKV layer = LayerOf(s, pool_base, s.layer);
  if (!s.k_scale.empty()) {
    layer.k_scale = static_cast<const float*>(scales->data());
    layer.v_scale = layer.k_scale + s.k_scale.size();
  }
  if (bad == Bad::kFewPages) layer.num_pages = 1;  // the plan uses more pages

  RunArgs args;
  args.plan = plan.get();
  args.layer = layer;
  args.q = at(q, Bad::kQ);
  args.o = at(o, Bad::kO);
  args.lse = reinterpret_cast<float*>(at(lse, Bad::kLse));
  args.q_dtype = s.dtype;
  args.k_new = at(kn, Bad::kKNew);
  args.kv_new_dtype = s.kv_new_dtype;
  args.v_new = at(vn, Bad::kVNew);
  args.options.causal = s.causal;
  args.options.window_left = s.window_left;
  args.options.logits_soft_cap = s.soft_cap;
  args.options.sinks = s.sinks.empty() ? nullptr : static_cast<const float*>(sinks->data());
  if (s.rope) {
    args.options.pos_encoding = PosEncoding::kRopeLlama;
    args.rope_offsets_host = s.rope_offsets.data();
  }
  if (bad == Bad::kRopeTheta) {
    args.options.pos_encoding = PosEncoding::kRopeLlama;
    args.options.rope_theta = -1.f;
  }
  args.stream = stream.get();
  StepOutput out;
  out.status = be.Attention(args);

  out.o.resize(poison_o.size());
  out.lse.resize(poison_lse.size());
  out.pool.resize(s.pool.size());
  GT_STATUS_CHECK(be.CopyToHost(out.o.data(), at(o, Bad::kO), out.o.size(), stream.get()));
  GT_STATUS_CHECK(be.CopyToHost(out.lse.data(), at(lse, Bad::kLse), out.lse.size(), stream.get()));
  GT_STATUS_CHECK(be.CopyToHost(out.pool.data(), pool_base, out.pool.size(), stream.get()));
  GT_STATUS_CHECK(be.Synchronize(stream.get()));
  return out;
}

// o_roundings: how many roundings of o to the dtype the two backends may differ by (2: each
// rounds once; a cascade plan also rounds every level's o before the merge).
void CompareStep(const std::string& name, const Step& s, Backend& cuda, Backend& cpu,
                 ResultTable& table, double o_roundings = 2) {
  StepOutput g = RunStep(cuda, s);
  StepOutput r = RunStep(cpu, s);
  if (!table.AddCheck(name + " runs on both backends", g.status.ok() && r.status.ok(),
                      absl::StrCat(g.status.ToString(), " / ", r.status.ToString()))) {
    return;
  }
  std::vector<uint8_t> unw = UnwrittenMask(g.o, s.dtype);
  // The CPU backend rounds o to the dtype too: allow the reference's own rounding twice.
  table.Add(name + " o", Compare(DecodeFrom(g.o, s.dtype), DecodeFrom(r.o, s.dtype), &unw),
            o_roundings * DefaultTolerance(s.dtype));
  std::vector<uint8_t> lunw = UnwrittenMask(g.lse, DType::kFloat32);
  table.Add(name + " lse",
            Compare(DecodeFrom(g.lse, DType::kFloat32), DecodeFrom(r.lse, DType::kFloat32), &lunw),
            s.dtype == DType::kBFloat16 ? 2e-3 : 5e-4);
  table.Add(name + " pool after append",
            Compare(DecodeFrom(g.pool, s.kv_dtype), DecodeFrom(r.pool, s.kv_dtype)), 0.0);
}

// One plan of PlanReuse: a sub-batch of the shared pool's requests, decode or prefill.
struct ReuseCase {
  PlanSpec spec;
  std::vector<uint8_t> q;
  std::vector<int32_t> rope_offsets;  // empty = no RoPE
};

// Runs every case on one stream, each plan destroyed right after its run was enqueued (no
// synchronisation in between), then copies all outputs back. Plan memory is reused in stream
// order: a plan freed too early would be overwritten by the next plan's page table while its run
// still waits in the queue, and that run's output would be wrong.
std::vector<std::vector<uint8_t>> RunReuseCases(Backend& be, const Step& base,
                                                const std::vector<ReuseCase>& cases) {
  auto stream = Unwrap(be.CreateStream(), "CreateStream");
  const size_t es = ElemSize(base.dtype);
  const int32_t hq = base.num_kv_heads * base.group;
  auto pool = Unwrap(be.Allocate(base.pool.size()), "Allocate pool");
  GT_STATUS_CHECK(be.CopyToBackend(pool->data(), base.pool.data(), base.pool.size(), stream.get()));
  std::vector<std::unique_ptr<BackendMemory>> qs, os;
  for (const ReuseCase& c : cases) {
    qs.push_back(Unwrap(be.Allocate(c.q.size()), "Allocate q"));
    const size_t o_bytes = c.spec.qo_tokens() * hq * base.head_dim * es;
    os.push_back(Unwrap(be.Allocate(o_bytes), "Allocate o"));
    GT_STATUS_CHECK(be.CopyToBackend(qs.back()->data(), c.q.data(), c.q.size(), stream.get()));
    // Poisoned (0xFF, NaN) before the run: an element the run does not write never passes.
    const std::vector<uint8_t> poison(o_bytes, 0xFF);
    GT_STATUS_CHECK(be.CopyToBackend(os.back()->data(), poison.data(), o_bytes, stream.get()));
  }
  GT_STATUS_CHECK(be.Synchronize(stream.get()));
  const PagedKV layer = LayerOf(base, pool->data(), base.layer);
  for (size_t i = 0; i < cases.size(); ++i) {
    auto plan = Unwrap(be.Prepare(cases[i].spec, stream.get()), "Prepare (reuse)");
    RunArgs args;
    args.plan = plan.get();
    args.layer = layer;
    args.q = qs[i]->data();
    args.o = os[i]->data();
    args.q_dtype = base.dtype;
    args.options.causal = true;
    if (!cases[i].rope_offsets.empty()) {
      args.options.pos_encoding = PosEncoding::kRopeLlama;
      args.rope_offsets_host = cases[i].rope_offsets.data();
    }
    args.stream = stream.get();
    GT_STATUS_CHECK(be.Attention(args));
    plan.reset();  // deleted while its run may still be queued
  }
  std::vector<std::vector<uint8_t>> out(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    out[i].resize(os[i]->size());
    GT_STATUS_CHECK(be.CopyToHost(out[i].data(), os[i]->data(), out[i].size(), stream.get()));
  }
  GT_STATUS_CHECK(be.Synchronize(stream.get()));
  return out;
}

// Many plans created and deleted back to back on one stream (decode, split decode and prefill
// mixed, different batch sizes, RoPE on some): every output must match the CPU backend's.
void PlanReuse(Backend& cuda, Backend& cpu, Rng& rng, ResultTable& table, bool small) {
  const int32_t requests = 8;
  Step base = MakeStep(rng, AttentionKind::kDecode, DType::kFloat16, requests, small ? 60 : 2500);
  const int32_t hq = base.num_kv_heads * base.group;
  std::vector<ReuseCase> cases;
  std::vector<std::string> names;
  const int iterations = small ? 6 : 24;
  for (int it = 0; it < iterations; ++it) {
    ReuseCase c;
    c.spec.kind = it % 3 == 2 ? AttentionKind::kPrefill : AttentionKind::kDecode;
    c.spec.num_qo_heads = hq;
    c.spec.num_kv_heads = base.num_kv_heads;
    c.spec.head_dim = base.head_dim;
    c.spec.page_size = base.page_size;
    c.spec.kv_dtype = base.dtype;
    // A random non-empty subset of the pool's requests, in a random order.
    std::vector<int32_t> pick;
    for (int32_t b = 0; b < requests; ++b) {
      if (rng.Int(0, 1) == 1) pick.push_back(b);
    }
    if (pick.empty()) pick.push_back(rng.Int(0, requests - 1));
    for (size_t i = pick.size() - 1; i > 0; --i)
      std::swap(pick[i], pick[rng.Int(0, static_cast<int32_t>(i))]);
    c.spec.kv_indptr.push_back(0);
    c.spec.qo_indptr.push_back(0);
    for (const int32_t b : pick) {
      for (int32_t p = base.indptr[b]; p < base.indptr[b + 1]; ++p)
        c.spec.kv_indices.push_back(base.indices[p]);
      c.spec.kv_indptr.push_back(static_cast<int32_t>(c.spec.kv_indices.size()));
      c.spec.kv_last_page_len.push_back(base.last_page_len[b]);
      const int32_t qo =
          c.spec.kind == AttentionKind::kDecode ? 1 : rng.Int(1, std::min(base.kv_len[b], 64));
      c.spec.qo_indptr.push_back(c.spec.qo_indptr.back() + qo);
    }
    if (it % 2 == 1) {
      for (size_t i = 0; i < pick.size(); ++i) c.rope_offsets.push_back(rng.Int(0, 100));
    }
    c.q = EncodeAs(rng.NormalVector(static_cast<size_t>(c.spec.qo_tokens()) * hq * base.head_dim),
                   base.dtype);
    names.push_back(absl::StrCat("plan reuse #", it, " ",
                                 c.spec.kind == AttentionKind::kDecode ? "decode" : "prefill",
                                 " B=", pick.size(), c.rope_offsets.empty() ? "" : " rope"));
    cases.push_back(std::move(c));
  }
  std::vector<std::vector<uint8_t>> g = RunReuseCases(cuda, base, cases);
  std::vector<std::vector<uint8_t>> r = RunReuseCases(cpu, base, cases);
  for (size_t i = 0; i < cases.size(); ++i) {
    // Every element written: the poison is NaN, which Compare counts (nan, unwritten) as a fail.
    std::vector<uint8_t> unw = UnwrittenMask(g[i], base.dtype);
    table.Add(names[i], Compare(DecodeFrom(g[i], base.dtype), DecodeFrom(r[i], base.dtype), &unw),
              2 * DefaultTolerance(base.dtype));
  }
}

void ErrorPaths(Backend& cuda, ResultTable& table) {
  const auto& info = cuda.info();
  table.AddCheck("info",
                 info.name == "cuda" && !info.head_dims.empty() && info.memory_total_bytes > 0 &&
                     info.cuda_ipc && info.tensor_alignment_bytes == 16,
                 absl::StrCat(info.name, " / ", info.device, " / ", info.memory_total_bytes,
                              " bytes / ", info.head_dims.size(), " head dims"));
  auto huge = cuda.Allocate(size_t{1} << 50);
  table.AddCheck("Allocate(1 PiB) -> RESOURCE_EXHAUSTED",
                 huge.status().code() == absl::StatusCode::kResourceExhausted,
                 std::string(huge.status().ToString()));
  table.AddCheck("healthy after OOM", cuda.Health().ok(), std::string(cuda.Health().ToString()));
  auto mem = cuda.Allocate(1 << 20);
  const std::string handle = mem.ok() ? (*mem)->ipc_handle() : "";
  table.AddCheck("ipc_handle is 64 bytes", handle.size() == 64, absl::StrCat(handle.size()));
  auto bad = cuda.OpenIpcBuffer("short", 0, 16);
  table.AddCheck("OpenIpcBuffer(bad size) -> INVALID_ARGUMENT",
                 bad.status().code() == absl::StatusCode::kInvalidArgument,
                 std::string(bad.status().ToString()));
  // A process cannot map its own allocation: an error, never a crash, and still healthy.
  auto own = cuda.OpenIpcBuffer(handle, 0, 16);
  table.AddCheck("OpenIpcBuffer(own handle) fails cleanly", !own.ok() && cuda.Health().ok(),
                 std::string(own.status().ToString()));
}

// Backend::ZeroRows (how a pool clears newly allocated pages in every layer, one 2-D memset):
// exactly the rows' ranges become zero, every other byte keeps its pattern.
void ZeroRowsExact(Backend& cuda, ResultTable& table) {
  constexpr size_t kStride = 4096, kBytes = 1000, kOffset = 48;
  constexpr int32_t kRows = 7;
  const size_t total = kStride * (kRows + 1);
  auto mem = cuda.Allocate(total);
  auto stream = cuda.CreateStream();
  if (!table.AddCheck("ZeroRows: allocate", mem.ok() && stream.ok(), "")) return;
  const std::vector<uint8_t> pattern(total, 0xAB);
  absl::Status s = cuda.CopyToBackend((*mem)->data(), pattern.data(), total, stream->get());
  if (s.ok()) {
    s = cuda.ZeroRows(static_cast<char*>((*mem)->data()) + kOffset, kBytes, kStride, kRows,
                      stream->get());
  }
  std::vector<uint8_t> got(total, 0x11);
  if (s.ok()) s = cuda.CopyToHost(got.data(), (*mem)->data(), total, stream->get());
  if (s.ok()) s = cuda.Synchronize(stream->get());
  size_t wrong = 0;
  for (size_t i = 0; i < total; ++i) {
    const size_t row = (i - std::min(i, kOffset)) / kStride, in_row = (i - kOffset) % kStride;
    const bool zeroed = i >= kOffset && row < kRows && in_row < kBytes;
    wrong += got[i] != (zeroed ? 0 : 0xAB);
  }
  table.AddCheck("ZeroRows: 7 rows of 1000 bytes, stride 4096: exactly those bytes zero",
                 s.ok() && wrong == 0, absl::StrCat(s.ToString(), ", ", wrong, " bytes wrong"));
}

void MergeThroughBackend(Backend& cuda, Backend& cpu, Rng& rng, ResultTable& table) {
  const int32_t rows = 9, states = 3, heads = 4, dim = 64;
  std::vector<uint8_t> v = EncodeAs(rng.NormalVector(rows * states * heads * dim), DType::kFloat16);
  std::vector<float> sv(rows * states * heads);
  for (float& x : sv) x = rng.Uniform(-5.f, 5.f);
  std::vector<std::vector<uint8_t>> outs;
  for (Backend* be : {&cuda, &cpu}) {
    auto dv = Unwrap(be->Allocate(v.size()), "Allocate");
    auto ds = Unwrap(be->Allocate(sv.size() * 4), "Allocate");
    auto dout = Unwrap(be->Allocate(rows * heads * dim * 2), "Allocate");
    GT_STATUS_CHECK(be->CopyToBackend(dv->data(), v.data(), v.size(), nullptr));
    GT_STATUS_CHECK(be->CopyToBackend(ds->data(), sv.data(), sv.size() * 4, nullptr));
    attnd::kernels::MergeStatesParams p;
    p.v_in = dv->data();
    p.s_in = static_cast<float*>(ds->data());
    p.v_out = dout->data();
    p.dtype = DType::kFloat16;
    p.num_rows = rows;
    p.num_states = states;
    p.num_heads = heads;
    p.head_dim = dim;
    GT_STATUS_CHECK(be->MergeStates(p, nullptr));
    std::vector<uint8_t> h(rows * heads * dim * 2);
    GT_STATUS_CHECK(be->CopyToHost(h.data(), dout->data(), h.size(), nullptr));
    GT_STATUS_CHECK(be->Synchronize(nullptr));
    outs.push_back(h);
  }
  std::vector<uint8_t> unw = UnwrittenMask(outs[0], DType::kFloat16);
  table.Add(
      "MergeStates via backend",
      Compare(DecodeFrom(outs[0], DType::kFloat16), DecodeFrom(outs[1], DType::kFloat16), &unw),
      2 * DefaultTolerance(DType::kFloat16));

  // The pair form (the wire's MergeState), in place into the first state as the daemon runs
  // merge_state_in_place: (v_a, s_a) <- merge((v_a, s_a), (v_b, s_b)).
  const size_t cells = static_cast<size_t>(rows) * heads, pair_v = cells * dim * 2;
  std::vector<uint8_t> va = EncodeAs(rng.NormalVector(cells * dim), DType::kBFloat16);
  std::vector<uint8_t> vb = EncodeAs(rng.NormalVector(cells * dim), DType::kBFloat16);
  std::vector<float> sa(cells), sb(cells);
  for (size_t c = 0; c < cells; ++c) {
    sa[c] = c % 5 == 0 ? -INFINITY : rng.Uniform(-8.f, 8.f);
    sb[c] = c % 7 == 0 ? -INFINITY : rng.Uniform(-8.f, 8.f);
  }
  std::vector<std::vector<uint8_t>> pair_v_out;
  std::vector<std::vector<float>> pair_s_out;
  for (Backend* be : {&cuda, &cpu}) {
    auto dva = Unwrap(be->Allocate(pair_v), "Allocate");
    auto dvb = Unwrap(be->Allocate(pair_v), "Allocate");
    auto dsa = Unwrap(be->Allocate(cells * 4), "Allocate");
    auto dsb = Unwrap(be->Allocate(cells * 4), "Allocate");
    GT_STATUS_CHECK(be->CopyToBackend(dva->data(), va.data(), pair_v, nullptr));
    GT_STATUS_CHECK(be->CopyToBackend(dvb->data(), vb.data(), pair_v, nullptr));
    GT_STATUS_CHECK(be->CopyToBackend(dsa->data(), sa.data(), cells * 4, nullptr));
    GT_STATUS_CHECK(be->CopyToBackend(dsb->data(), sb.data(), cells * 4, nullptr));
    attnd::kernels::MergeStatesParams p;
    p.v_in = p.v_out = dva->data();
    p.s_in = p.s_out = static_cast<float*>(dsa->data());
    p.v_in_b = dvb->data();
    p.s_in_b = static_cast<float*>(dsb->data());
    p.dtype = DType::kBFloat16;
    p.num_rows = rows;
    p.num_states = 2;
    p.num_heads = heads;
    p.head_dim = dim;
    GT_STATUS_CHECK(be->MergeStates(p, nullptr));
    std::vector<uint8_t> hv(pair_v);
    std::vector<float> hs(cells);
    GT_STATUS_CHECK(be->CopyToHost(hv.data(), dva->data(), pair_v, nullptr));
    GT_STATUS_CHECK(be->CopyToHost(hs.data(), dsa->data(), cells * 4, nullptr));
    GT_STATUS_CHECK(be->Synchronize(nullptr));
    pair_v_out.push_back(hv);
    pair_s_out.push_back(hs);
  }
  table.Add("MergeState in place via backend v",
            Compare(DecodeFrom(pair_v_out[0], DType::kBFloat16),
                    DecodeFrom(pair_v_out[1], DType::kBFloat16)),
            2 * DefaultTolerance(DType::kBFloat16));
  table.Add("MergeState in place via backend s", Compare(pair_s_out[0], pair_s_out[1]), 1e-5);
}

// RaggedAttention (the wire's RunRagged): a prepared RaggedPlanSpec and K/V as tensors, through
// the CUDA backend (RunRaggedPrefill) against the CPU backend, causal with RoPE offsets, soft cap
// and LSE, for a prefill, an append and a request without keys; a misaligned k and a paged run
// on the ragged plan are refused with nothing written.
void RaggedThroughBackend(Backend& cuda, Backend& cpu, Rng& rng, ResultTable& table) {
  const int32_t hq = 8, hkv = 2, dim = TestHeadDim();
  const std::vector<int32_t> qo_indptr = {0, 37, 41, 42}, kv_indptr = {0, 37, 141, 141};
  const int32_t qo = qo_indptr.back(), kv = kv_indptr.back();
  for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
    const std::vector<uint8_t> q =
        EncodeAs(rng.NormalVector(static_cast<size_t>(qo) * hq * dim), dt);
    const std::vector<uint8_t> k =
        EncodeAs(rng.NormalVector(static_cast<size_t>(kv) * hkv * dim), dt);
    const std::vector<uint8_t> v =
        EncodeAs(rng.NormalVector(static_cast<size_t>(kv) * hkv * dim), dt);
    const std::vector<int32_t> offsets = {5, 0, 9};
    const std::vector<float> sinks = rng.NormalVector(hq, 2.f);
    std::vector<std::vector<uint8_t>> o_out;
    std::vector<std::vector<float>> lse_out;
    for (Backend* be : {&cuda, &cpu}) {
      auto plan =
          Unwrap(be->Prepare(attnd::kernels::RaggedPlanSpec(qo_indptr, kv_indptr, hq, hkv, dim, dt),
                             nullptr),
                 "Prepare(RaggedPlanSpec)");
      auto dq = Unwrap(be->Allocate(q.size()), "Allocate");
      auto dk = Unwrap(be->Allocate(k.size() + 16), "Allocate");
      auto dv = Unwrap(be->Allocate(v.size()), "Allocate");
      auto dout = Unwrap(be->Allocate(q.size()), "Allocate");
      auto dlse = Unwrap(be->Allocate(static_cast<size_t>(qo) * hq * 4), "Allocate");
      GT_STATUS_CHECK(be->CopyToBackend(dq->data(), q.data(), q.size(), nullptr));
      GT_STATUS_CHECK(be->CopyToBackend(dk->data(), k.data(), k.size(), nullptr));
      GT_STATUS_CHECK(be->CopyToBackend(dv->data(), v.data(), v.size(), nullptr));
      const std::vector<uint8_t> poison(q.size(), 0xFF);
      GT_STATUS_CHECK(be->CopyToBackend(dout->data(), poison.data(), poison.size(), nullptr));
      attnd::kernels::RaggedRunArgs a;
      a.plan = plan.get();
      a.q = dq->data();
      a.o = dout->data();
      a.lse = static_cast<float*>(dlse->data());
      a.q_dtype = dt;
      a.k = dk->data();
      a.v = dv->data();
      a.options.causal = true;
      a.options.pos_encoding = attnd::kernels::PosEncoding::kRopeLlama;
      a.options.logits_soft_cap = 30.f;
      a.rope_offsets_host = offsets.data();
      // bf16: with attention sinks ([hq] in backend memory).
      auto dsinks = Unwrap(be->Allocate(sinks.size() * sizeof(float)), "Allocate");
      GT_STATUS_CHECK(
          be->CopyToBackend(dsinks->data(), sinks.data(), sinks.size() * sizeof(float), nullptr));
      if (dt == DType::kBFloat16) a.options.sinks = static_cast<const float*>(dsinks->data());
      if (be == &cuda) {
        attnd::kernels::RaggedRunArgs bad = a;
        bad.k = static_cast<char*>(dk->data()) + 2;
        const absl::Status st = cuda.RaggedAttention(bad);
        std::vector<uint8_t> after(q.size());
        GT_STATUS_CHECK(cuda.CopyToHost(after.data(), dout->data(), after.size(), nullptr));
        GT_STATUS_CHECK(cuda.Synchronize(nullptr));
        const std::string name =
            absl::StrCat("RaggedAttention ", attnd::kernels::DTypeName(dt), ": k misaligned");
        AddRefusal(table, name + " -> INVALID_ARGUMENT", st, absl::StatusCode::kInvalidArgument,
                   "k=0x");
        table.AddCheck(name + ": o untouched, healthy", after == poison && cuda.Health().ok(),
                       std::string(cuda.Health().ToString()));
        attnd::kernels::RunArgs paged;
        paged.plan = plan.get();
        paged.q = dq->data();
        paged.o = dout->data();
        paged.q_dtype = dt;
        AddRefusal(table, name + ": a paged run on the ragged plan is refused",
                   cuda.Attention(paged), absl::StatusCode::kInvalidArgument, "ragged plan");
      }
      GT_STATUS_CHECK(be->RaggedAttention(a));
      std::vector<uint8_t> ho(q.size());
      std::vector<float> hl(static_cast<size_t>(qo) * hq);
      GT_STATUS_CHECK(be->CopyToHost(ho.data(), dout->data(), ho.size(), nullptr));
      GT_STATUS_CHECK(be->CopyToHost(hl.data(), dlse->data(), hl.size() * 4, nullptr));
      GT_STATUS_CHECK(be->Synchronize(nullptr));
      o_out.push_back(std::move(ho));
      lse_out.push_back(std::move(hl));
    }
    const std::string name = absl::StrCat("RaggedAttention ", attnd::kernels::DTypeName(dt), " D",
                                          dim, dt == DType::kBFloat16 ? " sinks" : "");
    std::vector<uint8_t> unw = UnwrittenMask(o_out[0], dt);
    table.Add(name + " o", Compare(DecodeFrom(o_out[0], dt), DecodeFrom(o_out[1], dt), &unw),
              2 * DefaultTolerance(dt));
    table.Add(name + " lse", Compare(lse_out[0], lse_out[1]), 1e-4);
  }
}

// Every kernel refuses what would fault it, before anything is written: for decode on CUDA cores
// (GQA 1), decode on tensor cores (GQA 4) and prefill/append, each bad input of kBadCases is
// refused (INVALID_ARGUMENT naming the field), the cache is byte-for-byte what it was, o is still
// poisoned, the backend is healthy; then the same step runs and matches the CPU backend.
void RefusedRunsChangeNothing(Backend& cuda, Backend& cpu, Rng& rng, ResultTable& table) {
  struct Kernel {
    const char* name;
    AttentionKind kind;
    int32_t group;
  };
  for (const Kernel& k : {Kernel{"decode cuda-cores", AttentionKind::kDecode, 1},
                          Kernel{"decode tensor-cores", AttentionKind::kDecode, 4},
                          Kernel{"prefill/append", AttentionKind::kPrefill, 4}}) {
    if (k.kind == AttentionKind::kDecode && k.group == 4 && TestHeadDim() > 128) {
      table.AddSkip(k.name, "no tensor-core decode for head_dim > 128 (trimmed build)");
      continue;
    }
    const Step s = MakeStep(rng, k.kind, DType::kBFloat16, 3, 70, k.group);
    for (const BadCase& b : kBadCases) {
      const StepOutput r = RunStep(cuda, s, b.bad);
      const std::string name = absl::StrCat(k.name, ": ", b.what, " (k_new/v_new given)");
      AddRefusal(table, name + " -> INVALID_ARGUMENT", r.status, absl::StatusCode::kInvalidArgument,
                 b.field);
      bool o_untouched = true;
      for (uint8_t x : r.o) o_untouched = o_untouched && x == 0xFF;
      const absl::Status health = cuda.Health();
      table.AddCheck(
          name + ": cache unchanged, o untouched, healthy",
          r.pool == s.pool && o_untouched && health.ok(),
          absl::StrCat(r.pool == s.pool ? "cache same" : "CACHE CHANGED", ", ",
                       o_untouched ? "o poisoned" : "O WRITTEN", ", ", health.ToString()));
    }
    CompareStep(absl::StrCat(k.name, " after the refusals"), s, cuda, cpu, table);
  }

  // AppendKv and MergeStates through the backend.
  const Step s = MakeStep(rng, AttentionKind::kPrefill, DType::kFloat16, 2, 40);
  auto pool = Unwrap(cuda.Allocate(s.pool.size()), "Allocate");
  auto kn = Unwrap(cuda.Allocate(s.k_new.size() + 16), "Allocate");
  GT_STATUS_CHECK(cuda.CopyToBackend(pool->data(), s.pool.data(), s.pool.size(), nullptr));
  GT_STATUS_CHECK(cuda.CopyToBackend(kn->data(), s.k_new.data(), s.k_new.size(), nullptr));
  auto plan = Unwrap(cuda.Prepare(SpecOf(s), nullptr), "Prepare");
  const PagedKV layer = LayerOf(s, pool->data(), /*layer_index=*/0);
  char* k = static_cast<char*>(kn->data());
  for (const auto& [what, kp, vp, field] :
       {std::tuple{"k", k + 2, k, "k=0x"}, std::tuple{"v", k, k + 2, "v=0x"}}) {
    const absl::Status st = cuda.AppendKv(*plan, layer, kp, vp, layer.dtype, nullptr);
    std::vector<uint8_t> after(s.pool.size());
    GT_STATUS_CHECK(cuda.CopyToHost(after.data(), pool->data(), after.size(), nullptr));
    GT_STATUS_CHECK(cuda.Synchronize(nullptr));
    const std::string name = absl::StrCat("AppendKv: ", what, " misaligned");
    AddRefusal(table, name + " -> INVALID_ARGUMENT", st, absl::StatusCode::kInvalidArgument, field);
    table.AddCheck(name + ": cache unchanged, healthy", after == s.pool && cuda.Health().ok(),
                   std::string(cuda.Health().ToString()));
  }
  attnd::kernels::MergeStatesParams m;
  m.v_in = k + 2;
  m.s_in = reinterpret_cast<const float*>(pool->data());
  m.v_out = pool->data();
  m.dtype = DType::kFloat16;
  m.num_rows = 1;
  m.num_states = 1;
  m.num_heads = 1;
  m.head_dim = 64;
  AddRefusal(table, "MergeStates: v_in misaligned -> INVALID_ARGUMENT",
             cuda.MergeStates(m, nullptr), absl::StatusCode::kInvalidArgument, "v_in=0x");
  table.AddCheck("healthy after the refusals", cuda.Health().ok(),
                 std::string(cuda.Health().ToString()));
}

// Dense custom masks of a step (per request [qo_len * kv_len], 1 = visible) -> its plan's mask.
using DenseMasks = std::vector<std::vector<uint8_t>>;
void SetMask(Step& s, const DenseMasks& dense) {
  const std::vector<uint8_t> packed = attnd::kernels::PackCustomMask(dense);
  s.mask = Unwrap(attnd::kernels::BuildCustomMaskImage(std::span<const uint8_t>(packed),
                                                       std::span<const int32_t>(s.qo_indptr),
                                                       std::span<const int32_t>(s.kv_len)),
                  "BuildCustomMaskImage");
}
// Each key visible with probability p; request b's row (b % qo_len) sees nothing.
DenseMasks RandomMasks(Rng& rng, const Step& s, double p) {
  DenseMasks out(s.kv_len.size());
  for (size_t b = 0; b < s.kv_len.size(); ++b) {
    const int32_t qo = s.qo_len[b], kv = s.kv_len[b];
    out[b].resize(static_cast<size_t>(qo) * kv);
    for (auto& x : out[b]) x = rng.Uniform(0.f, 1.f) < p ? 1 : 0;
    if (qo > 0) {
      const int32_t dark = static_cast<int32_t>(b) % qo;
      std::fill_n(out[b].begin() + static_cast<std::ptrdiff_t>(dark) * kv, kv, 0);
    }
  }
  return out;
}
// Speculative decoding's tree verification: request b's qo_len rows are a complete tree (node
// i's parent (i - 1) / fanout) on its kv_len - qo_len prefix.
DenseMasks TreeMasks(const Step& s, int32_t fanout) {
  DenseMasks out;
  for (size_t b = 0; b < s.kv_len.size(); ++b) {
    out.push_back(attnd::kernels::TreeVerificationMask(
        attnd::kernels::CompleteTreeParents(s.qo_len[b], fanout), s.kv_len[b] - s.qo_len[b]));
  }
  return out;
}

// Custom masks (CreatePlanRequest.custom_mask; the plan's CustomMaskImage) through the Backend
// interface, CUDA against the CPU backend, outputs poisoned: tree masks on prefixes (the sm90
// kernel's masked build at head_dim 64 / 128, the FA2 RoPE kernel with RoPE), causal and not;
// random masks with a row that sees nothing at awkward lengths, page sizes 1 / 16 / 64 and GQA
// 1 / 4 / 8 with soft cap, window and sinks; a short query on a long cache (split-KV: the mask
// in every chunk); the other head dims (FA2 default tile at 256); a cascade plan (the mask on
// the last level).
void CustomMasks(Backend& cuda, Backend& cpu, Rng& rng, ResultTable& table, bool small) {
  for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
    const char* dn = dt == DType::kFloat16 ? "f16" : "bf16";
    const std::vector<int32_t> prefixes =
        small ? std::vector<int32_t>{100, 7, 33} : std::vector<int32_t>{4096, 1000, 97};
    std::vector<int32_t> kv, qo;
    for (const int32_t prefix : prefixes) {
      kv.push_back(prefix + 64);
      qo.push_back(64);
    }
    kv.push_back(7);  // a tree without a prefix
    qo.push_back(7);
    Step tree = MakeStepOf(rng, AttentionKind::kPrefill, dt, kv, qo, 4);
    tree.rope = false;
    SetMask(tree, TreeMasks(tree, 4));
    CompareStep(absl::StrCat("mask ", dn, " 64-node trees causal"), tree, cuda, cpu, table);
    tree.causal = false;
    CompareStep(absl::StrCat("mask ", dn, " 64-node trees non-causal"), tree, cuda, cpu, table);
    tree.rope = true;
    CompareStep(absl::StrCat("mask ", dn, " 64-node trees rope"), tree, cuda, cpu, table);

    struct Shape {
      int32_t page_size, group;
      bool causal;
      float cap;
      int32_t window;
      bool sinks, rope;
    };
    for (const Shape& sh :
         {Shape{1, 1, false, 0.f, -1, false, false}, Shape{16, 4, true, 20.f, 50, true, false},
          Shape{64, 8, false, 0.f, 30, false, true}}) {
      const int32_t big = small ? 200 : 1000;
      Step r = MakeStepOf(rng, AttentionKind::kPrefill, dt, {1, 7, 97, big}, {1, 7, 97, big / 2},
                          sh.group, sh.page_size);
      r.rope = sh.rope;
      r.causal = sh.causal;
      r.soft_cap = sh.cap;
      r.window_left = sh.window;
      if (sh.sinks) r.sinks = rng.NormalVector(static_cast<size_t>(r.num_kv_heads) * r.group, 2.f);
      SetMask(r, RandomMasks(rng, r, 0.6));
      CompareStep(absl::StrCat("mask ", dn, " random page ", sh.page_size, " g", sh.group,
                               sh.causal ? " causal" : "", sh.cap > 0 ? " cap" : "",
                               sh.window >= 0 ? " window" : "", sh.sinks ? " sinks" : "",
                               sh.rope ? " rope" : ""),
                  r, cuda, cpu, table);
    }

    Step split = MakeStepOf(rng, AttentionKind::kPrefill, dt, {small ? 3000 : 33000}, {16}, 4);
    split.rope = false;
    SetMask(split, RandomMasks(rng, split, 0.9));
    CompareStep(absl::StrCat("mask ", dn, " qo 16 on kv ", split.kv_len[0], " (split-KV)"), split,
                cuda, cpu, table);

    for (const int32_t hd : {64, 256}) {
      if (!attnd::kernels::cuda::HeadDimCompiled(hd)) {
        table.AddSkip(absl::StrCat("mask ", dn, " head_dim ", hd), "head_dim not built");
        continue;
      }
      Step h = MakeStepOf(rng, AttentionKind::kPrefill, dt, {300, 64}, {64, 64}, 4, 16, hd);
      h.rope = false;
      SetMask(h, TreeMasks(h, 2));
      CompareStep(absl::StrCat("mask ", dn, " trees head_dim ", hd), h, cuda, cpu, table);
    }

    Step cas = MakeCascadeStep(rng, AttentionKind::kPrefill, dt, {{{3, small ? 64 : 2048}}},
                               {40, 90, 17}, 4);
    SetMask(cas, RandomMasks(rng, cas, 0.7));
    CompareStep(absl::StrCat("mask ", dn, " cascade (the last level's)"), cas, cuda, cpu, table,
                /*o_roundings=*/4);
  }
}

// Runs this executable again with `mode` and `extra` arguments; returns its exit code.
// Cascade plans (attnd/kernels/cascade.h) through the Backend interface, CUDA against the CPU
// backend (outputs poisoned first): 2 and 3 levels, decode (a long shared prefix: the prefix
// level's split-KV prefill) and prefill/append (causal, soft cap), GQA 4 and 1, sinks counted
// once; RoPE refused before anything is written.
void Cascade(Backend& cuda, Backend& cpu, Rng& rng, ResultTable& table, bool small) {
  // Each level's o is rounded to the dtype before the merge: allow a few roundings more.
  const auto compare = [&](const std::string& name, const Step& s) {
    CompareStep(name, s, cuda, cpu, table, /*o_roundings=*/4);
  };
  for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
    const char* dn = dt == DType::kFloat16 ? "f16" : "bf16";
    const int32_t prefix = small ? 100 : 32768;
    Step dec = MakeCascadeStep(rng, AttentionKind::kDecode, dt, {{{16, prefix}}},
                               std::vector<int32_t>(16, small ? 20 : 256), 4);
    compare(absl::StrCat("cascade decode ", dn, " 2 levels, prefix ", prefix), dec);
    Step dec3 =
        MakeCascadeStep(rng, AttentionKind::kDecode, dt,
                        {{{6, small ? 50 : 4000}}, {{2, 37}, {1, 16}, {3, small ? 90 : 900}}},
                        {5, 17, 64, 1, 33, 300}, 1);
    compare(absl::StrCat("cascade decode ", dn, " 3 levels g1"), dec3);
    Step pre = MakeCascadeStep(rng, AttentionKind::kPrefill, dt,
                               {{{4, small ? 64 : 2048}}, {{2, 48}, {2, 130}}},
                               {40, 250, 7, small ? 60 : 600}, 4);
    pre.soft_cap = 30.f;
    compare(absl::StrCat("cascade prefill ", dn, " 3 levels causal cap append"), pre);
    Step sinks = MakeCascadeStep(rng, AttentionKind::kDecode, dt, {{{3, small ? 70 : 5000}}},
                                 {9, 40, 128}, 4);
    sinks.sinks = rng.NormalVector(static_cast<size_t>(sinks.num_kv_heads) * sinks.group, 2.f);
    compare(absl::StrCat("cascade decode ", dn, " sinks"), sinks);
    Step rope = dec3;
    rope.rope = true;
    StepOutput refused = RunStep(cuda, rope);
    table.AddCheck(absl::StrCat("cascade ", dn, " RoPE refused, o and the pool untouched"),
                   refused.status.code() == absl::StatusCode::kInvalidArgument &&
                       UnwrittenMask(refused.o, dt) ==
                           std::vector<uint8_t>(refused.o.size() / ElemSize(dt), 1) &&
                       refused.pool == rope.pool,
                   std::string(refused.status.ToString()));
  }
}

int RunChild(const char* mode, std::vector<std::string> extra) {
  char exe[4096] = {0};
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return -2;
  std::vector<char*> argv = {exe, const_cast<char*>(mode)};
  for (std::string& e : extra) argv.push_back(e.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, exe, nullptr, nullptr, argv.data(), environ) != 0) return -3;
  int wstatus = 0;
  waitpid(pid, &wstatus, 0);
  return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
}

// ---- two-process CUDA IPC ------------------------------------------------------------------
// The parent allocates a buffer, fills it with a byte pattern and passes its IPC handle (hex) to
// a child process (this executable, --ipc-child HEX SIZE); the child maps it with OpenIpcBuffer,
// checks the pattern, writes the complement into the first half, checks that a declared size
// larger than the allocation is refused, and exits 0 on success.
std::string ToHex(const std::string& bytes) {
  static const char* k = "0123456789abcdef";
  std::string h;
  for (unsigned char c : bytes) {
    h.push_back(k[c >> 4]);
    h.push_back(k[c & 15]);
  }
  return h;
}
std::string FromHex(const std::string& h) {
  std::string b;
  for (size_t i = 0; i + 1 < h.size(); i += 2) {
    b.push_back(static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16)));
  }
  return b;
}
uint8_t PatternByte(size_t i) { return static_cast<uint8_t>((i * 131 + 7) & 0xFF); }

int IpcChild(const std::string& hex, size_t size) {
  auto cuda = attnd::kernels::CreateCudaBackend({});
  if (!cuda.ok()) return 10;
  auto too_big = (*cuda)->OpenIpcBuffer(FromHex(hex), 0, size * 4);
  if (too_big.ok() || too_big.status().code() != absl::StatusCode::kOutOfRange) return 11;
  auto mem = (*cuda)->OpenIpcBuffer(FromHex(hex), 0, size);
  if (!mem.ok()) {
    std::fprintf(stderr, "child: %s\n", std::string(mem.status().ToString()).c_str());
    return 12;
  }
  std::vector<uint8_t> h(size);
  if (!(*cuda)->CopyToHost(h.data(), (*mem)->data(), size, nullptr).ok()) return 13;
  if (!(*cuda)->Synchronize(nullptr).ok()) return 13;
  for (size_t i = 0; i < size; ++i) {
    if (h[i] != PatternByte(i)) return 14;
  }
  for (size_t i = 0; i < size / 2; ++i) h[i] = static_cast<uint8_t>(~PatternByte(i));
  if (!(*cuda)->CopyToBackend((*mem)->data(), h.data(), size / 2, nullptr).ok()) return 15;
  if (!(*cuda)->Synchronize(nullptr).ok()) return 15;
  return 0;
}

void IpcTwoProcesses(Backend& cuda, ResultTable& table) {
  const size_t size = 3 << 20;
  auto mem = Unwrap(cuda.Allocate(size), "Allocate");
  std::vector<uint8_t> h(size);
  for (size_t i = 0; i < size; ++i) h[i] = PatternByte(i);
  GT_STATUS_CHECK(cuda.CopyToBackend(mem->data(), h.data(), size, nullptr));
  GT_STATUS_CHECK(cuda.Synchronize(nullptr));
  const std::string hex = ToHex(mem->ipc_handle());
  const int code = RunChild("--ipc-child", {hex, std::to_string(size)});
  std::vector<uint8_t> after(size);
  GT_STATUS_CHECK(cuda.CopyToHost(after.data(), mem->data(), size, nullptr));
  GT_STATUS_CHECK(cuda.Synchronize(nullptr));
  size_t wrong = 0;
  for (size_t i = 0; i < size; ++i) {
    const uint8_t want = i < size / 2 ? static_cast<uint8_t>(~PatternByte(i)) : PatternByte(i);
    wrong += after[i] != want;
  }
  table.AddCheck("IPC: child maps, reads, writes; oversize refused", code == 0 && wrong == 0,
                 absl::StrCat("child exit ", code, ", ", wrong, " wrong bytes after"));
}

// ---- sticky errors -----------------------------------------------------------------------------
// In a child process (the context is unusable afterwards): a decode over a layer that claims far
// more pages than its memory holds (the backend checks page ids against the layer's num_pages,
// not against the allocation behind it: that is the caller's contract) faults with an illegal
// address; Synchronize must fail, Health() must turn INTERNAL and stay so, and later calls must
// fail instead of touching the device. (cuda_fault_test covers InjectDeviceFaultForTesting.)
int StickyChild() {
  auto cuda = attnd::kernels::CreateCudaBackend({});
  if (!cuda.ok()) return 10;
  Backend& be = **cuda;
  if (!be.Health().ok()) return 11;
  auto layer_mem = Unwrap(be.Allocate(1 << 20), "Allocate");
  const int32_t hd = TestHeadDim();
  auto q = Unwrap(be.Allocate(32 * hd * 2), "Allocate");
  auto o = Unwrap(be.Allocate(32 * hd * 2), "Allocate");
  PlanSpec spec;
  spec.kind = AttentionKind::kDecode;
  spec.num_qo_heads = 32;
  spec.num_kv_heads = 8;
  spec.head_dim = hd;
  spec.page_size = 16;
  spec.kv_indptr = {0, 1};
  spec.kv_indices = {200000000};  // ~6.5 TB past the layer: not mapped
  spec.kv_last_page_len = {16};
  spec.qo_indptr = {0, 1};
  auto plan = Unwrap(be.Prepare(spec, nullptr), "Prepare");
  RunArgs args;
  args.plan = plan.get();
  args.layer.dtype = DType::kFloat16;
  args.layer.num_pages = 200000001;  // a lie: the memory holds 1 MiB
  args.layer.page_size = 16;
  args.layer.num_kv_heads = 8;
  args.layer.head_dim = hd;
  args.layer.SetNhdStrides();
  args.layer.data = layer_mem->data();
  args.q = q->data();
  args.o = o->data();
  args.q_dtype = DType::kFloat16;
  absl::Status launch = be.Attention(args);
  absl::Status sync = be.Synchronize(nullptr);
  if (launch.ok() && sync.ok()) return 12;  // the fault must surface somewhere
  const absl::Status health = be.Health();
  if (health.code() != absl::StatusCode::kInternal) return 13;
  auto later = be.Allocate(16);
  if (later.ok() || later.status().code() != absl::StatusCode::kInternal) return 14;
  if (be.Health().code() != absl::StatusCode::kInternal) return 15;
  std::printf("child: %s\n", std::string(health.ToString()).c_str());
  return 0;
}

// ---- Streamed page-table updates (Backend::UpdatePlan) ------------------------------------
// One step of a plan that lives across steps: its whole table after the step's deltas (what
// the daemon's CheckUpdatePlan builds), and the step's q and new k/v.
struct UpdateStep {
  PlanSpec spec;
  std::vector<uint8_t> q, k_new, v_new;
  std::vector<int32_t> rope_offsets;  // empty: no RoPE
  std::string name;
};

// `steps` steps over the pages of `base`'s pool (its random K/V; every page free at first, in a
// random order): each step every request grows (decode: by 1, now and then 3 at once; prefill:
// by a chunk of 0..24 tokens, its queries), taking new pages when it fills its last one; every
// third step a request leaves (its pages are free again) and every other step one joins, so the
// batch and the table shrink and grow (past the plan's first allocation: the CUDA plan moves to
// a larger block) while lengths change the split-KV schedule. Odd steps use RoPE.
std::vector<UpdateStep> MakeUpdateSteps(Rng& rng, const Step& base, AttentionKind kind,
                                        int32_t batch, int32_t max_kv, int32_t num_steps) {
  struct Model {
    std::vector<int32_t> pages;
    int32_t kv_len = 0, qo_len = 1;
  };
  std::vector<int32_t> free = rng.Permutation(base.num_pages);
  const int32_t page = base.page_size;
  const bool decode = kind == AttentionKind::kDecode;
  // A request of kv_len tokens (nullopt-like false when the pool has too few free pages).
  auto make = [&](int32_t kv_len, Model* out) {
    const int32_t n = (kv_len + page - 1) / page;
    if (static_cast<int32_t>(free.size()) < n) return false;
    out->pages.assign(free.end() - n, free.end());
    free.resize(free.size() - n);
    out->kv_len = kv_len;
    out->qo_len = decode ? 1 : rng.Int(1, std::min(kv_len, 64));
    return true;
  };
  std::vector<Model> requests;
  for (int32_t b = 0; b < batch; ++b) {
    Model m;
    if (make(rng.Int(1, max_kv), &m)) requests.push_back(std::move(m));
  }
  std::vector<UpdateStep> steps;
  const int32_t hq = base.num_kv_heads * base.group;
  for (int32_t t = 0; t < num_steps; ++t) {
    if (t > 0) {
      for (Model& m : requests) {
        const int32_t grow = decode ? (rng.Int(0, 9) == 0 ? 3 : 1) : rng.Int(0, 24);
        const int32_t pages_after = (m.kv_len + grow + page - 1) / page;
        if (pages_after - static_cast<int32_t>(m.pages.size()) >
            static_cast<int32_t>(free.size())) {
          continue;  // out of pages: this request waits
        }
        while (static_cast<int32_t>(m.pages.size()) < pages_after) {
          m.pages.push_back(free.back());
          free.pop_back();
        }
        m.kv_len += grow;
        if (!decode) m.qo_len = grow;
      }
      if (t % 3 == 0 && requests.size() > 1) {
        const size_t leaving =
            static_cast<size_t>(rng.Int(0, static_cast<int32_t>(requests.size()) - 1));
        free.insert(free.end(), requests[leaving].pages.begin(), requests[leaving].pages.end());
        requests.erase(requests.begin() + static_cast<std::ptrdiff_t>(leaving));
      }
      Model joined;
      if (t % 2 == 0 && make(rng.Int(1, max_kv), &joined)) requests.push_back(std::move(joined));
    }
    UpdateStep st;
    PlanSpec& spec = st.spec;
    spec.kind = kind;
    spec.num_qo_heads = hq;
    spec.num_kv_heads = base.num_kv_heads;
    spec.head_dim = base.head_dim;
    spec.page_size = page;
    spec.kv_dtype = base.dtype;
    spec.kv_indptr = {0};
    spec.qo_indptr = {0};
    for (const Model& m : requests) {
      spec.kv_indices.insert(spec.kv_indices.end(), m.pages.begin(), m.pages.end());
      spec.kv_indptr.push_back(static_cast<int32_t>(spec.kv_indices.size()));
      spec.kv_last_page_len.push_back(m.kv_len - (static_cast<int32_t>(m.pages.size()) - 1) * page);
      spec.qo_indptr.push_back(spec.qo_indptr.back() + m.qo_len);
    }
    if (spec.qo_tokens() == 0) {  // a prefill step where nobody grew: one row for request 0
      requests[0].qo_len = 1;
      for (size_t b = 1; b < spec.qo_indptr.size(); ++b) spec.qo_indptr[b] = 1;
    }
    const size_t rows = static_cast<size_t>(spec.qo_tokens());
    st.q = EncodeAs(rng.NormalVector(rows * hq * base.head_dim), base.dtype);
    st.k_new = EncodeAs(rng.NormalVector(rows * base.num_kv_heads * base.head_dim), base.dtype);
    st.v_new = EncodeAs(rng.NormalVector(rows * base.num_kv_heads * base.head_dim), base.dtype);
    if (t % 2 == 1) {
      for (size_t b = 0; b < requests.size(); ++b) st.rope_offsets.push_back(rng.Int(0, 50));
    }
    st.name = absl::StrCat("step ", t, " B=", spec.batch_size(), " ", spec.kv_indices.size(),
                           " pages", st.rope_offsets.empty() ? "" : " rope");
    steps.push_back(std::move(st));
  }
  return steps;
}

struct UpdateRunOutput {
  std::vector<std::vector<uint8_t>> o, lse;  // per step
  std::vector<uint8_t> pool;                 // after the last step
  absl::Status status;
};

// Runs every step on one stream without synchronising in between: step 0 prepares the plan;
// each later step updates it in place (UpdatePlan, `update`) or prepares a new plan for the
// step (the reference), then runs layer `base.layer` with the step's k/v appended. Outputs are
// poisoned first and read back at the end, so a run that saw another step's table (an update
// applied before the runs enqueued ahead of it, or a block freed under them) shows up.
UpdateRunOutput RunUpdateSteps(Backend& be, const Step& base, const std::vector<UpdateStep>& steps,
                               bool update) {
  UpdateRunOutput out;
  auto stream = Unwrap(be.CreateStream(), "CreateStream");
  const size_t es = ElemSize(base.dtype);
  const int32_t hq = base.num_kv_heads * base.group;
  auto pool = Unwrap(be.Allocate(base.pool.size()), "Allocate pool");
  GT_STATUS_CHECK(be.CopyToBackend(pool->data(), base.pool.data(), base.pool.size(), stream.get()));
  std::vector<std::unique_ptr<BackendMemory>> q, k, v, o, lse;
  for (const UpdateStep& st : steps) {
    const size_t rows = static_cast<size_t>(st.spec.qo_tokens());
    for (auto [mem, bytes] :
         {std::pair{&q, st.q.size()}, std::pair{&k, st.k_new.size()},
          std::pair{&v, st.v_new.size()}, std::pair{&o, rows * hq * base.head_dim * es},
          std::pair{&lse, rows * hq * sizeof(float)}}) {
      mem->push_back(Unwrap(be.Allocate(bytes), "Allocate step buffer"));
    }
    GT_STATUS_CHECK(be.CopyToBackend(q.back()->data(), st.q.data(), st.q.size(), stream.get()));
    GT_STATUS_CHECK(
        be.CopyToBackend(k.back()->data(), st.k_new.data(), st.k_new.size(), stream.get()));
    GT_STATUS_CHECK(
        be.CopyToBackend(v.back()->data(), st.v_new.data(), st.v_new.size(), stream.get()));
    for (const auto& m : {o.back().get(), lse.back().get()}) {
      const std::vector<uint8_t> poison(m->size(), 0xFF);
      GT_STATUS_CHECK(be.CopyToBackend(m->data(), poison.data(), poison.size(), stream.get()));
    }
  }
  GT_STATUS_CHECK(be.Synchronize(stream.get()));
  const PagedKV layer = LayerOf(base, pool->data(), base.layer);
  std::unique_ptr<attnd::kernels::PreparedPlan> plan;
  for (size_t t = 0; t < steps.size() && out.status.ok(); ++t) {
    if (t == 0 || !update) {
      auto prepared = be.Prepare(steps[t].spec, stream.get());
      out.status = prepared.status();
      if (prepared.ok()) plan = *std::move(prepared);
    } else {
      out.status = be.UpdatePlan(plan, steps[t].spec, stream.get());
    }
    if (!out.status.ok()) {
      out.status =
          absl::Status(out.status.code(), absl::StrCat(steps[t].name, ": ", out.status.message()));
      break;
    }
    RunArgs args;
    args.plan = plan.get();
    args.layer = layer;
    args.q = q[t]->data();
    args.o = o[t]->data();
    args.lse = static_cast<float*>(lse[t]->data());
    args.q_dtype = base.dtype;
    args.k_new = k[t]->data();
    args.v_new = v[t]->data();
    args.options.causal = true;
    if (!steps[t].rope_offsets.empty()) {
      args.options.pos_encoding = PosEncoding::kRopeLlama;
      args.rope_offsets_host = steps[t].rope_offsets.data();
    }
    args.stream = stream.get();
    out.status = be.Attention(args);
  }
  for (size_t t = 0; t < steps.size(); ++t) {
    out.o.emplace_back(o[t]->size());
    out.lse.emplace_back(lse[t]->size());
    GT_STATUS_CHECK(be.CopyToHost(out.o[t].data(), o[t]->data(), o[t]->size(), stream.get()));
    GT_STATUS_CHECK(be.CopyToHost(out.lse[t].data(), lse[t]->data(), lse[t]->size(), stream.get()));
  }
  out.pool.resize(base.pool.size());
  GT_STATUS_CHECK(be.CopyToHost(out.pool.data(), pool->data(), out.pool.size(), stream.get()));
  GT_STATUS_CHECK(be.Synchronize(stream.get()));
  plan.reset();
  return out;
}

// A plan updated in place across steps on the CUDA backend against the CPU backend preparing a
// new plan every step: decode (short and long, split-KV) and prefill/append, f16 and bf16, every
// step's o and lse, and the pool after all the appends (exact).
void PlanUpdates(Backend& cuda, Backend& cpu, Rng& rng, ResultTable& table, bool small) {
  struct Config {
    const char* name;
    AttentionKind kind;
    DType dtype;
    int32_t pool_batch, pool_kv, batch, max_kv, steps;
  };
  const std::vector<Config> configs = {
      {"decode f16", AttentionKind::kDecode, DType::kFloat16, 16, small ? 80 : 2000, 6,
       small ? 60 : 1500, small ? 8 : 16},
      {"decode bf16 long (split)", AttentionKind::kDecode, DType::kBFloat16, 4, small ? 200 : 20000,
       2, small ? 150 : 16000, small ? 6 : 10},
      {"prefill f16", AttentionKind::kPrefill, DType::kFloat16, 12, small ? 80 : 1000, 4,
       small ? 60 : 600, small ? 6 : 12},
  };
  for (const Config& c : configs) {
    Step base = MakeStep(rng, AttentionKind::kDecode, c.dtype, c.pool_batch, c.pool_kv);
    const std::vector<UpdateStep> steps =
        MakeUpdateSteps(rng, base, c.kind, c.batch, c.max_kv, c.steps);
    const UpdateRunOutput g = RunUpdateSteps(cuda, base, steps, /*update=*/true);
    const UpdateRunOutput r = RunUpdateSteps(cpu, base, steps, /*update=*/false);
    const std::string name = absl::StrCat("plan update ", c.name);
    if (!table.AddCheck(name + " runs on both backends", g.status.ok() && r.status.ok(),
                        absl::StrCat(g.status.ToString(), " / ", r.status.ToString()))) {
      continue;
    }
    for (size_t t = 0; t < steps.size(); ++t) {
      std::vector<uint8_t> unw = UnwrittenMask(g.o[t], c.dtype);
      table.Add(absl::StrCat(name, " ", steps[t].name, " o"),
                Compare(DecodeFrom(g.o[t], c.dtype), DecodeFrom(r.o[t], c.dtype), &unw),
                2 * DefaultTolerance(c.dtype));
      std::vector<uint8_t> lunw = UnwrittenMask(g.lse[t], DType::kFloat32);
      table.Add(absl::StrCat(name, " ", steps[t].name, " lse"),
                Compare(DecodeFrom(g.lse[t], DType::kFloat32),
                        DecodeFrom(r.lse[t], DType::kFloat32), &lunw),
                c.dtype == DType::kBFloat16 ? 2e-3 : 5e-4);
    }
    table.Add(name + " pool after the appends",
              Compare(DecodeFrom(g.pool, c.dtype), DecodeFrom(r.pool, c.dtype)), 0.0);
  }
}

// K/V stored in another type than q, through the Backend interface (CUDA against the CPU
// backend, the new rows appended by the step's Attention call): fp8 e4m3 / e5m2 pools with
// per-KV-head and per-tensor scales under fp16 and bf16 queries, on both decode kernels (GQA 1
// and 4) and split-KV; a bf16 pool under fp16 queries (the CUDA-core kernel). Refused, with
// nothing changed: a prefill plan on an fp8 pool (at Prepare) and a prefill run whose q type is
// not the pool's (at Attention).
void KvDtypes(Backend& cuda, Backend& cpu, Rng& rng, ResultTable& table, bool small) {
  for (DType fp8 : {DType::kFloat8E4M3, DType::kFloat8E5M2}) {
    for (DType qt : {DType::kFloat16, DType::kBFloat16}) {
      for (int32_t group : {1, 4}) {
        if (group == 4 && TestHeadDim() > 128) continue;  // no tensor-core decode there
        const bool per_head = group == 4 || qt == DType::kBFloat16;
        Step st = WithKvDtype(
            rng, MakeStep(rng, AttentionKind::kDecode, qt, small ? 3 : 9, small ? 60 : 2000, group),
            fp8, per_head);
        CompareStep(absl::StrCat("decode q ", DTypeName(qt), " on ", DTypeName(fp8), " g", group,
                                 per_head ? " head scales" : " tensor scale", " rope"),
                    st, cuda, cpu, table);
      }
      Step split =
          WithKvDtype(rng, MakeStep(rng, AttentionKind::kDecode, qt, 2, small ? 40 : 20000), fp8);
      split.rope = false;
      split.soft_cap = 30.f;
      CompareStep(
          absl::StrCat("decode q ", DTypeName(qt), " on ", DTypeName(fp8), " long (split) cap"),
          split, cuda, cpu, table);
    }
  }
  // New rows given in fp32 / fp16 / bf16, quantized onto the fp8 pool by the append (the pool
  // after it must match the CPU backend's bit for bit: CompareStep's "pool after append").
  for (DType fp8 : {DType::kFloat8E4M3, DType::kFloat8E5M2}) {
    for (DType rows : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      Step st = WithKvDtype(
          rng, MakeStep(rng, AttentionKind::kDecode, DType::kBFloat16, 5, small ? 60 : 900, 4), fp8,
          /*per_head=*/rows != DType::kFloat32, rows);
      CompareStep(
          absl::StrCat("decode on ", DTypeName(fp8), ", new rows ", DTypeName(rows), " quantized"),
          st, cuda, cpu, table);
    }
  }
  for (int32_t group : {1, 4}) {
    Step mixed = WithKvDtype(
        rng, MakeStep(rng, AttentionKind::kDecode, DType::kFloat16, 4, small ? 60 : 900, group),
        DType::kBFloat16);
    CompareStep(absl::StrCat("decode q float16 on a bfloat16 pool g", group), mixed, cuda, cpu,
                table);
  }

  // A prefill plan on an fp8 pool: refused by Prepare, naming the kind and the dtype.
  const Step pre = WithKvDtype(rng, MakeStep(rng, AttentionKind::kPrefill, DType::kFloat16, 2, 50),
                               DType::kFloat8E4M3);
  AddRefusal(table, "prefill plan on a float8_e4m3 pool -> UNIMPLEMENTED at Prepare",
             cuda.Prepare(SpecOf(pre), nullptr).status(), absl::StatusCode::kUnimplemented,
             "kind=ATTENTION_KIND_PREFILL on a float8_e4m3 pool");
  // A plan whose q_dtype (CreatePlanRequest.q_dtype) the prefill kernels cannot run over the
  // pool: refused by Prepare, naming both dtypes; a decode plan of the same takes it.
  {
    Step mixed = WithKvDtype(rng, MakeStep(rng, AttentionKind::kPrefill, DType::kFloat16, 2, 50),
                             DType::kBFloat16);
    PlanSpec spec = SpecOf(mixed);
    spec.q_dtype = DType::kFloat16;
    AddRefusal(table, "prefill plan with q_dtype float16 on a bfloat16 pool -> UNIMPLEMENTED",
               cuda.Prepare(spec, nullptr).status(), absl::StatusCode::kUnimplemented,
               "q_dtype=float16 on a bfloat16 pool");
    spec.kind = AttentionKind::kDecode;
    spec.qo_indptr.assign({0, 1, 2});
    table.AddCheck("decode plan with q_dtype float16 on a bfloat16 pool: prepared",
                   cuda.Prepare(spec, nullptr).ok(), "");
  }
  // A prefill run with q float16 on a bfloat16 pool: refused before the append, cache intact.
  const Step mixed_pre = WithKvDtype(
      rng, MakeStep(rng, AttentionKind::kPrefill, DType::kFloat16, 2, 50), DType::kBFloat16);
  const StepOutput r = RunStep(cuda, mixed_pre);
  AddRefusal(table, "prefill q float16 on a bfloat16 pool -> UNIMPLEMENTED", r.status,
             absl::StatusCode::kUnimplemented, "kv dtype bfloat16 with q dtype float16");
  bool o_untouched = true;
  for (uint8_t x : r.o) o_untouched = o_untouched && x == 0xFF;
  table.AddCheck("prefill q float16 on a bfloat16 pool: cache unchanged, o untouched, healthy",
                 r.pool == mixed_pre.pool && o_untouched && cuda.Health().ok(),
                 std::string(cuda.Health().ToString()));
}

}  // namespace
}  // namespace attnd::gpu_test

int main(int argc, char** argv) {
  using namespace attnd::gpu_test;  // NOLINT(google-build-using-namespace): the whole test
  if (argc == 4 && std::strcmp(argv[1], "--ipc-child") == 0) {
    return IpcChild(argv[2], std::strtoull(argv[3], nullptr, 10));
  }
  if (argc == 2 && std::strcmp(argv[1], "--sticky-child") == 0) return StickyChild();
  TestFlags flags = ParseFlags(argc, argv);
  PrintDevice();
  Rng rng(flags.seed);
  ResultTable table("cuda_backend_test");
  table.set_verbose(flags.verbose);
  auto cuda = Unwrap(attnd::kernels::CreateCudaBackend({}), "CreateCudaBackend");
  auto cpu = Unwrap(attnd::kernels::CreateCpuBackend({}), "CreateCpuBackend");
  std::printf("cuda backend: %s, steps at head_dim %d\n", cuda->info().device.c_str(),
              TestHeadDim());
  if (TestHeadDim() != 128) {
    table.AddSkip("the steps at head_dim 128",
                  "head_dim 128 not built; they run at head_dim " + std::to_string(TestHeadDim()));
  }

  ErrorPaths(*cuda, table);
  ZeroRowsExact(*cuda, table);
  IpcTwoProcesses(*cuda, table);
  for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
    const char* dn = dt == DType::kFloat16 ? "f16" : "bf16";
    Step dec =
        MakeStep(rng, AttentionKind::kDecode, dt, flags.small ? 3 : 17, flags.small ? 50 : 3000);
    CompareStep(absl::StrCat("decode ", dn, " rope"), dec, *cuda, *cpu, table);
    dec.rope = false;
    dec = MakeStep(rng, AttentionKind::kDecode, dt, 2, flags.small ? 40 : 20000);
    dec.rope = false;
    CompareStep(absl::StrCat("decode ", dn, " long (split)"), dec, *cuda, *cpu, table);
    if (!flags.small) {
      Step pre = MakeStep(rng, AttentionKind::kPrefill, dt, 4, 700);
      CompareStep(absl::StrCat("prefill ", dn, " causal rope"), pre, *cuda, *cpu, table);
    }
    // FlashInfer's window: window_left bounds from below only; non-causal rows also see the
    // keys after their position.
    Step win = MakeStep(rng, AttentionKind::kPrefill, dt, 3, flags.small ? 60 : 500);
    win.causal = false;
    win.window_left = 17;
    win.soft_cap = 20.f;
    CompareStep(absl::StrCat("prefill ", dn, " non-causal window 17 cap"), win, *cuda, *cpu, table);
    Step dwin = MakeStep(rng, AttentionKind::kDecode, dt, 4, flags.small ? 60 : 900);
    dwin.window_left = 33;
    CompareStep(absl::StrCat("decode ", dn, " window 33"), dwin, *cuda, *cpu, table);
    // Attention sinks through the Backend interface: decode (CUDA cores at GQA 1, tensor cores
    // at GQA 4; the long one split, the sink applied once in the merge) and prefill/append.
    for (int32_t group : {1, 4}) {
      Step sd = MakeStep(rng, AttentionKind::kDecode, dt, 2, flags.small ? 40 : 20000, group);
      sd.rope = false;
      sd.sinks = rng.NormalVector(static_cast<size_t>(sd.num_kv_heads) * sd.group, 2.f);
      CompareStep(absl::StrCat("decode ", dn, " g", group, " sinks"), sd, *cuda, *cpu, table);
    }
    Step sp = MakeStep(rng, AttentionKind::kPrefill, dt, 3, flags.small ? 60 : 700);
    sp.soft_cap = 25.f;
    sp.window_left = 40;
    sp.sinks = rng.NormalVector(static_cast<size_t>(sp.num_kv_heads) * sp.group, 2.f);
    CompareStep(absl::StrCat("prefill ", dn, " rope cap window sinks"), sp, *cuda, *cpu, table);
  }
  Cascade(*cuda, *cpu, rng, table, flags.small);
  CustomMasks(*cuda, *cpu, rng, table, flags.small);
  RefusedRunsChangeNothing(*cuda, *cpu, rng, table);
  MergeThroughBackend(*cuda, *cpu, rng, table);
  RaggedThroughBackend(*cuda, *cpu, rng, table);
  PlanReuse(*cuda, *cpu, rng, table, flags.small);
  PlanUpdates(*cuda, *cpu, rng, table, flags.small);
  KvDtypes(*cuda, *cpu, rng, table, flags.small);
  if (!flags.small) {  // (a deliberate fault: not under compute-sanitizer)
    const int code = RunChild("--sticky-child", {});
    table.AddCheck("sticky error -> Health INTERNAL for good (child)", code == 0,
                   absl::StrCat("child exit ", code));
  }
  table.AddCheck("healthy at the end", cuda->Health().ok(), std::string(cuda->Health().ToString()));
  table.Print(stdout);
  return table.ExitCode();
}
