// Cascade (shared-prefix) decode benchmark (issue 15 item 1): one batch, timed two ways through
// the CUDA Backend interface (what the daemon runs): the ordinary decode plan, where every
// request's page table names the shared prefix followed by its own pages (the prefix is read B
// times), and the cascade plan (attnd/kernels/cascade.h: the prefix attended once by all B query
// rows as a prefill level, the own pages as a decode level, then MergeStates). Shapes: fp16, 32
// query / 8 KV heads, head_dim 128, page size 16, pages in random order, L2 flushed before every
// timed run (bench_util's TimeIt). Prints both times, the speedup and the largest |o| difference
// between the two (a sanity check), plus a JSON line per row.
//   cascade_bench [--quick] [--only B,PREFIX,OWN]
//     default rows: B = 64 and 256, a 32768-token prefix, 256 own tokens each; --quick: B = 64.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "attnd/kernels/backend.h"
#include "attnd/kernels/cascade.h"
#include "attnd/kernels/float_convert.h"
#include "bench_util.h"

namespace {

using namespace attnd::bench;  // NOLINT(google-build-using-namespace): bench helpers
using attnd::kernels::AttentionKind;
using attnd::kernels::Backend;
using attnd::kernels::BackendMemory;
using attnd::kernels::DType;
using attnd::kernels::PagedKV;
using attnd::kernels::PlanSpec;
using attnd::kernels::RunArgs;

constexpr int kQoHeads = 32, kKvHeads = 8, kHeadDim = 128, kPageSize = 16;

struct Shape {
  int batch, prefix_len, own_len;
};

template <typename T>
T Must(absl::StatusOr<T> s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, std::string(s.status().ToString()).c_str());
    std::exit(2);
  }
  return std::move(*s);
}
void Must(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, std::string(s.ToString()).c_str());
    std::exit(2);
  }
}

void RunShape(Backend& backend, const Shape& shape) {
  auto stream = Must(backend.CreateStream(), "CreateStream");
  const cudaStream_t st = static_cast<cudaStream_t>(stream->native());
  const int prefix_pages = (shape.prefix_len + kPageSize - 1) / kPageSize;
  const int own_pages = (shape.own_len + kPageSize - 1) / kPageSize;
  const int num_pages = prefix_pages + shape.batch * own_pages;
  PagedKV layer;
  layer.dtype = DType::kFloat16;
  layer.num_pages = num_pages;
  layer.page_size = kPageSize;
  layer.num_kv_heads = kKvHeads;
  layer.head_dim = kHeadDim;
  layer.SetNhdStrides();
  const size_t pool_elems = static_cast<size_t>(layer.page_stride) * num_pages;
  auto pool = Must(backend.Allocate(pool_elems * 2), "Allocate pool");
  FillRandom16(pool->data(), pool_elems, 11, /*bf16=*/false);
  layer.data = pool->data();
  const size_t q_elems = static_cast<size_t>(shape.batch) * kQoHeads * kHeadDim;
  auto q = Must(backend.Allocate(q_elems * 2), "Allocate q");
  FillRandom16(q->data(), q_elems, 12, false);
  auto o_flat = Must(backend.Allocate(q_elems * 2), "Allocate o");
  auto o_cascade = Must(backend.Allocate(q_elems * 2), "Allocate o");
  BENCH_CUDA_CHECK(cudaDeviceSynchronize());  // the fills ran on the legacy default stream

  // Pages in random order: the prefix's, then each request's own.
  std::vector<int32_t> ids(num_pages);
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937 rng(5);
  std::shuffle(ids.begin(), ids.end(), rng);
  const std::vector<int32_t> prefix(ids.begin(), ids.begin() + prefix_pages);
  const int32_t prefix_last = shape.prefix_len - (prefix_pages - 1) * kPageSize;
  const int32_t own_last = shape.own_len - (own_pages - 1) * kPageSize;
  if (prefix_last != kPageSize) {
    std::fprintf(stderr, "the prefix must fill whole pages for the flat plan (PREFIX %% 16)\n");
    std::exit(2);
  }
  PlanSpec flat;
  flat.kind = AttentionKind::kDecode;
  flat.num_qo_heads = kQoHeads;
  flat.num_kv_heads = kKvHeads;
  flat.head_dim = kHeadDim;
  flat.page_size = kPageSize;
  flat.kv_dtype = DType::kFloat16;
  PlanSpec cascade = flat;
  flat.kv_indptr = cascade.kv_indptr = {0};
  for (int b = 0; b < shape.batch; ++b) {
    const auto own = ids.begin() + prefix_pages + b * own_pages;
    flat.kv_indices.insert(flat.kv_indices.end(), prefix.begin(), prefix.end());
    flat.kv_indices.insert(flat.kv_indices.end(), own, own + own_pages);
    cascade.kv_indices.insert(cascade.kv_indices.end(), own, own + own_pages);
    flat.kv_indptr.push_back(static_cast<int32_t>(flat.kv_indices.size()));
    cascade.kv_indptr.push_back(static_cast<int32_t>(cascade.kv_indices.size()));
    flat.kv_last_page_len.push_back(own_last);
    cascade.kv_last_page_len.push_back(own_last);
  }
  flat.qo_indptr.resize(shape.batch + 1);
  std::iota(flat.qo_indptr.begin(), flat.qo_indptr.end(), 0);
  cascade.qo_indptr = flat.qo_indptr;
  cascade.cascade_levels.push_back({.qo_indptr = {0, shape.batch},
                                    .kv_indptr = {0, prefix_pages},
                                    .kv_indices = prefix,
                                    .kv_last_page_len = {kPageSize}});
  auto flat_plan = Must(backend.Prepare(flat, stream.get()), "Prepare flat");
  auto cascade_plan = Must(backend.Prepare(cascade, stream.get()), "Prepare cascade");

  const auto args_of = [&](const attnd::kernels::PreparedPlan& plan, BackendMemory& o) {
    RunArgs args;
    args.plan = &plan;
    args.layer = layer;
    args.q = q->data();
    args.o = o.data();
    args.q_dtype = DType::kFloat16;
    args.stream = stream.get();
    return args;
  };
  const RunArgs flat_args = args_of(*flat_plan, *o_flat);
  const RunArgs cascade_args = args_of(*cascade_plan, *o_cascade);
  const Timing tf = TimeIt([&](int) { Must(backend.Attention(flat_args), "flat Attention"); }, st);
  const Timing tc =
      TimeIt([&](int) { Must(backend.Attention(cascade_args), "cascade Attention"); }, st);

  std::vector<uint16_t> hf(q_elems), hc(q_elems);
  Must(backend.CopyToHost(hf.data(), o_flat->data(), q_elems * 2, stream.get()), "copy");
  Must(backend.CopyToHost(hc.data(), o_cascade->data(), q_elems * 2, stream.get()), "copy");
  Must(backend.Synchronize(stream.get()), "Synchronize");
  double max_diff = 0;
  for (size_t i = 0; i < q_elems; ++i) {
    const double a = attnd::kernels::LoadAsFloat(hf.data(), DType::kFloat16, i);
    const double c = attnd::kernels::LoadAsFloat(hc.data(), DType::kFloat16, i);
    max_diff = std::max(max_diff, std::isnan(a - c) ? INFINITY : std::fabs(a - c));
  }
  // K and V bytes each plan reads at least once: the flat plan reads the prefix per request.
  const double page_bytes = static_cast<double>(layer.page_stride) * 2;
  const double flat_gb = page_bytes * shape.batch * (prefix_pages + own_pages) / 1e9;
  const double cascade_gb = page_bytes * num_pages / 1e9;
  std::printf(
      "B=%-4d prefix=%-6d own=%-4d  flat %8.3f ms (%6.1f GB)  cascade %8.3f ms (%5.2f GB)"
      "  speedup %6.2fx  max|o diff| %.2e\n",
      shape.batch, shape.prefix_len, shape.own_len, tf.median_ms, flat_gb, tc.median_ms, cascade_gb,
      tf.median_ms / tc.median_ms, max_diff);
  std::printf(
      "JSON {\"bench\":\"cascade_decode\",\"dtype\":\"float16\",\"batch\":%d,\"prefix_len\":%d,"
      "\"own_len\":%d,\"num_qo_heads\":%d,\"num_kv_heads\":%d,\"head_dim\":%d,"
      "\"flat_ms\":%.4f,\"cascade_ms\":%.4f,\"speedup\":%.3f,\"max_abs_diff\":%.3e}\n",
      shape.batch, shape.prefix_len, shape.own_len, kQoHeads, kKvHeads, kHeadDim, tf.median_ms,
      tc.median_ms, tf.median_ms / tc.median_ms, max_diff);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  Shape only{0, 0, 0};
  for (int i = 1; i < argc; ++i) {
    quick = quick || std::strcmp(argv[i], "--quick") == 0;
    if (std::strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
      if (std::sscanf(argv[++i], "%d,%d,%d", &only.batch, &only.prefix_len, &only.own_len) != 3) {
        std::fprintf(stderr, "--only B,PREFIX,OWN\n");
        return 2;
      }
    }
  }
  PrintDeviceLine();
  auto backend = Must(attnd::kernels::CreateCudaBackend({}), "CreateCudaBackend");
  std::vector<Shape> shapes = {{64, 32768, 256}, {256, 32768, 256}};
  if (quick) shapes = {{64, 32768, 256}};
  if (only.batch > 0) shapes = {only};
  for (const Shape& s : shapes) RunShape(*backend, s);
  return 0;
}
