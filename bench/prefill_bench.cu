// Benchmark of the CUDA batch prefill / append kernels (bf16, head_dim 128, causal, 32 query
// heads, 32 or 8 KV heads), paged (page size 16, pages in random order) and ragged.
//
// FLOPs: causal prefill counts half the square, 4 * B * H * L^2 * D / 2 (as the peers' numbers
// in shared/gpu/HOST.md); append counts the visible (query, key) pairs, 4 * H * D * pairs.
// Timing: CUDA events around each launch, 3 warm-up runs, median of the timed runs (at least
// 10, more for short kernels, bounded at ~0.25 s per case). Inputs are random (never zeros).
// Output: a table, then one JSON object per line (prefix "JSON ").
//
// Usage: prefill_bench [--quick] [--wide] [--rope] [--tile=auto|default|wide|wide3|wide64|sm90]
//   --quick: fewer repetitions; --wide: also time each head_dim 128 tile variant
//   (PrefillScheduleOptions::tile = default|wide|wide3|wide64, kernels/cuda/planning/
//   prefill_tiling.h); the first table is the tile of --tile (default "auto": the variant
//   PreparePrefill picks by default).
//   --rope: also time the paged workloads with RoPE on the fly (tile "rope": the RoPE kernels,
//   q and k rotated in fp32 and kept exact as hi + lo parts, kernels/cuda/NUMERICS.md).
//   --mask: only the custom-mask rows (issue 15): a 64-node tree (node i's parent (i - 1) / 4)
//   on a 4096-token prefix at B=16, non-causal with the tree mask ("tree 64 onto 4096 B16",
//   JSON "mask":"tree"; TFLOP/s over the mask's visible pairs), and the causal append of the
//   same shape ("append 64 onto 4096 B16"), 8 and 32 KV heads.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "attnd/kernels/cuda_prefill.h"
#include "attnd/kernels/custom_mask.h"
#include "attnd/kernels/types.h"

namespace {

using attnd::kernels::DType;
using attnd::kernels::PagedAttentionParams;
using attnd::kernels::PagedKV;
using attnd::kernels::RaggedAttentionParams;
namespace kcuda = attnd::kernels::cuda;

#define BENCH_CHECK(expr)                                                                         \
  do {                                                                                            \
    cudaError_t e_ = (expr);                                                                      \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(2);                                                                               \
    }                                                                                             \
  } while (0)
#define BENCH_STATUS(expr)                                               \
  do {                                                                   \
    auto s_ = (expr);                                                    \
    if (!s_.ok()) {                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, \
                   std::string(s_.ToString()).c_str());                  \
      std::exit(2);                                                      \
    }                                                                    \
  } while (0)

// Fills n bf16 values with a hash of the index, uniform in [-scale, scale).
__global__ void FillRandomBf16(__nv_bfloat16* x, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed ^ static_cast<uint32_t>(i >> 32);
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    x[i] = __float2bfloat16((static_cast<float>(h) * 2.3283064e-10f * 2.f - 1.f) * scale);
  }
}

struct DeviceMem {
  void* p = nullptr;
  explicit DeviceMem(size_t bytes) { BENCH_CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 16))); }
  ~DeviceMem() { cudaFree(p); }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

template <typename T>
std::unique_ptr<DeviceMem> Upload(const std::vector<T>& v) {
  auto m = std::make_unique<DeviceMem>(v.size() * sizeof(T));
  if (!v.empty())
    BENCH_CHECK(cudaMemcpy(m->p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return m;
}

void FillRandom(void* p, int64_t n, uint32_t seed, float scale) {
  FillRandomBf16<<<1024, 256>>>(static_cast<__nv_bfloat16*>(p), n, seed, scale);
  BENCH_CHECK(cudaGetLastError());
}

struct Workload {
  std::string name;
  int batch;
  int qo_len;
  int kv_len;
  int num_kv_heads;
  bool paged;
  bool pages_in_order = false;  // diagnostic: page table 0, 1, 2, ... instead of shuffled
  bool rope = false;            // RoPE LLaMA on the fly (theta 1e4)
  bool no_split = false;        // PrefillScheduleOptions::allow_split = false
  // A custom mask: every request's qo_len rows are a tree (node i's parent (i - 1) / 4) on its
  // kv_len - qo_len prefix, non-causal (speculative decoding's tree verification; FlashInfer's
  // custom-mask mode ignores causal too).
  bool tree = false;
};

constexpr int kHeads = 32;
constexpr int kHeadDim = 128;
constexpr int kPageSize = 16;

double Median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The plan's tile option named on the command line or in a table ("auto", "rope": the default).
kcuda::PrefillScheduleOptions::Tile TileOption(const std::string& tile) {
  using Tile = kcuda::PrefillScheduleOptions::Tile;
  if (tile == "default") return Tile::kDefault;
  if (tile == "wide") return Tile::kWide;
  if (tile == "wide3") return Tile::kWide3;
  if (tile == "wide64") return Tile::kWide64;
  if (tile == "sm90") return Tile::kHopper;
  return Tile::kAuto;
}

void RunWorkload(const Workload& w, bool quick, const char* tile, std::vector<std::string>& json) {
  const int B = w.batch, Hq = kHeads, Hkv = w.num_kv_heads, D = kHeadDim;
  std::vector<int32_t> qo_indptr(B + 1), kv_len(B, w.kv_len), kv_indptr(B + 1), last(B);
  std::vector<int32_t> indices;
  for (int b = 0; b <= B; ++b) qo_indptr[b] = b * w.qo_len;
  const int64_t qo_nnz = qo_indptr[B];
  const int pages_per_req = (w.kv_len + kPageSize - 1) / kPageSize;
  const int num_pages = pages_per_req * B;
  std::mt19937 gen(42);
  std::vector<int32_t> perm(num_pages);
  std::iota(perm.begin(), perm.end(), 0);
  if (!w.pages_in_order) std::shuffle(perm.begin(), perm.end(), gen);
  for (int b = 0; b <= B; ++b) kv_indptr[b] = w.paged ? b * pages_per_req : b * w.kv_len;
  for (int b = 0; b < B; ++b) last[b] = w.kv_len - (pages_per_req - 1) * kPageSize;
  indices = perm;

  const int64_t q_elems = qo_nnz * Hq * D;
  const int64_t kv_elems = w.paged ? static_cast<int64_t>(num_pages) * 2 * kPageSize * Hkv * D
                                   : 2 * static_cast<int64_t>(B) * w.kv_len * Hkv * D;
  DeviceMem q(q_elems * 2), o(q_elems * 2), lse(qo_nnz * Hq * 4), kv(kv_elems * 2);
  FillRandom(q.p, q_elems, 1, 2.f);
  FillRandom(kv.p, kv_elems, 2, 2.f);
  auto d_qo = Upload(qo_indptr);
  auto d_kvi = Upload(kv_indptr);
  auto d_idx = Upload(indices);
  auto d_last = Upload(last);

  // The tree mask (Workload::tree) as the plan's row-word image, in device memory.
  std::vector<std::vector<uint8_t>> dense;
  if (w.tree) {
    dense.assign(B, attnd::kernels::TreeVerificationMask(
                        attnd::kernels::CompleteTreeParents(w.qo_len, 4), w.kv_len - w.qo_len));
  }
  const std::vector<uint8_t> packed = attnd::kernels::PackCustomMask(dense);
  attnd::kernels::CustomMaskImage mask;
  if (w.tree) {
    auto image = attnd::kernels::BuildCustomMaskImage(std::span<const uint8_t>(packed),
                                                      std::span<const int32_t>(qo_indptr),
                                                      std::span<const int32_t>(kv_len));
    BENCH_STATUS(image.status());
    mask = *std::move(image);
  }
  auto d_mask_words = Upload(mask.words);
  auto d_mask_offset = Upload(mask.word_offset);
  auto d_mask_dense = Upload(mask.dense_until);

  kcuda::PrefillScheduleOptions sched;
  sched.tile = TileOption(tile);
  sched.allow_split = !w.no_split;
  sched.custom_mask = w.tree;
  auto work = kcuda::PreparePrefill(qo_indptr, kv_len, Hq, Hkv, D, sched, nullptr);
  BENCH_STATUS(work.status());

  attnd::kernels::QueryOutput qo;
  qo.q = q.p;
  qo.o = o.p;
  qo.lse = lse.as<float>();
  qo.q_dtype = DType::kBFloat16;
  qo.num_qo_heads = Hq;
  qo.batch_size = B;
  qo.qo_indptr = d_qo->as<int32_t>();
  attnd::kernels::AttentionOptions opt;
  opt.causal = !w.tree;
  if (w.tree) {
    opt.custom_mask = {d_mask_words->as<uint32_t>(), d_mask_offset->as<int32_t>(),
                       d_mask_dense->as<int32_t>()};
  }
  if (w.rope) opt.pos_encoding = attnd::kernels::PosEncoding::kRopeLlama;

  PagedAttentionParams pp;
  RaggedAttentionParams rp;
  if (w.paged) {
    pp.qo = qo;
    pp.options = opt;
    PagedKV& k = pp.kv;
    k.data = kv.p;
    k.dtype = DType::kBFloat16;
    k.num_pages = num_pages;
    k.page_size = kPageSize;
    k.num_kv_heads = Hkv;
    k.head_dim = D;
    k.SetNhdStrides();
    k.batch_size = B;
    k.indptr = d_kvi->as<int32_t>();
    k.indices = d_idx->as<int32_t>();
    k.last_page_len = d_last->as<int32_t>();
  } else {
    rp.qo = qo;
    rp.options = opt;
    rp.kv.k = kv.p;
    rp.kv.v = static_cast<char*>(kv.p) + kv_elems;  // second half (bytes: kv_elems/2 * 2)
    rp.kv.dtype = DType::kBFloat16;
    rp.kv.num_kv_heads = Hkv;
    rp.kv.head_dim = D;
    rp.kv.stride_n = static_cast<int64_t>(Hkv) * D;
    rp.kv.stride_h = D;
    rp.kv.batch_size = B;
    rp.kv.indptr = d_kvi->as<int32_t>();
  }
  auto launch = [&]() {
    if (w.paged)
      BENCH_STATUS(kcuda::RunPagedPrefill(**work, pp, nullptr));
    else
      BENCH_STATUS(kcuda::RunRaggedPrefill(**work, rp, nullptr));
  };

  // Visible (query, key) pairs; causal prefill uses the half-square convention.
  double pairs = 0;
  if (w.tree) {  // the tree mask's visible pairs
    for (const uint8_t bit : dense[0]) pairs += bit;
    pairs *= B;
  } else if (w.qo_len == w.kv_len) {
    pairs = static_cast<double>(B) * w.kv_len * w.kv_len / 2.0;
  } else {
    for (int i = 0; i < w.qo_len; ++i) pairs += w.kv_len - w.qo_len + i + 1;
    pairs *= B;
  }
  const double flops = 4.0 * Hq * D * pairs;

  cudaEvent_t e0, e1;
  BENCH_CHECK(cudaEventCreate(&e0));
  BENCH_CHECK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) launch();
  BENCH_CHECK(cudaDeviceSynchronize());
  std::vector<float> ms;
  float total = 0;
  const int min_reps = quick ? 5 : 10, max_reps = quick ? 10 : 50;
  while (static_cast<int>(ms.size()) < min_reps ||
         (static_cast<int>(ms.size()) < max_reps && total < 250.f)) {
    BENCH_CHECK(cudaEventRecord(e0));
    launch();
    BENCH_CHECK(cudaEventRecord(e1));
    BENCH_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    BENCH_CHECK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
    total += t;
  }
  BENCH_CHECK(cudaGetLastError());
  const double med = Median(ms);
  const double tflops = flops / (med * 1e-3) / 1e12;
  // The kernel that ran: the plan's (PrefillKernelName), or the RoPE kernel.
  const char* kernel = w.rope ? "fa2-rope" : kcuda::PrefillKernelName(**work);
  std::printf("%-34s %6s %10s %3d %6d %6d %4d/%-3d %10.3f %9.1f\n", w.name.c_str(),
              w.paged ? "paged" : "ragged", kernel, B, w.qo_len, w.kv_len, Hq, Hkv, med * 1e3,
              tflops);
  char buf[512];
  std::snprintf(
      buf, sizeof(buf),
      "{\"bench\":\"prefill\",\"workload\":\"%s\",\"kv\":\"%s\",\"tile\":\"%s\",\"kernel\":\"%s\","
      "\"dtype\":\"bf16\",%s"
      "\"head_dim\":%d,\"causal\":%s,\"rope\":%s,\"batch\":%d,\"qo_len\":%d,"
      "\"kv_len\":%d,\"num_qo_heads\":%d,\"num_kv_heads\":%d,\"page_size\":%d,"
      "\"median_us\":%.2f,\"tflops\":%.2f,\"reps\":%zu}",
      w.name.c_str(), w.paged ? "paged" : "ragged", tile, kernel,
      w.tree ? "\"mask\":\"tree\"," : "", D, w.tree ? "false" : "true", w.rope ? "true" : "false",
      B, w.qo_len, w.kv_len, Hq, Hkv, w.paged ? kPageSize : 0, med * 1e3, tflops, ms.size());
  json.push_back(buf);
  BENCH_CHECK(cudaEventDestroy(e0));
  BENCH_CHECK(cudaEventDestroy(e1));
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, wide = false, rope = false, mask = false;
  std::string main_tile = "auto";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--tile=", 0) == 0) main_tile = arg.substr(7);
    quick = quick || std::string(argv[i]) == "--quick";
    wide = wide || std::string(argv[i]) == "--wide";
    rope = rope || std::string(argv[i]) == "--rope";
    mask = mask || std::string(argv[i]) == "--mask";
  }
  int dev = 0;
  BENCH_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDeviceProperties(&prop, dev));
  std::printf("device: %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  std::printf("%-34s %6s %10s %3s %6s %6s %8s %10s %9s\n", "workload", "kv", "kernel", "B", "qo",
              "kv_len", "Hq/Hkv", "median_us", "TFLOP/s");
  std::vector<Workload> ws;
  if (mask) {  // --mask: the tree-mask rows and causal prefill of the same shape only
    std::vector<std::string> json;
    for (int hkv : {8, 32}) {
      Workload tree{"tree 64 onto 4096 B16", 16, 64, 4096 + 64, hkv, true};
      tree.tree = true;
      RunWorkload(tree, quick, main_tile.c_str(), json);
      RunWorkload({"append 64 onto 4096 B16", 16, 64, 4096 + 64, hkv, true}, quick,
                  main_tile.c_str(), json);
    }
    for (const auto& j : json) std::printf("JSON %s\n", j.c_str());
    return 0;
  }
  for (bool paged : {true, false}) {
    for (int hkv : {32, 8}) {
      ws.push_back({"prefill causal B1 L4096", 1, 4096, 4096, hkv, paged});
      ws.push_back({"prefill causal B1 L8192", 1, 8192, 8192, hkv, paged});
      ws.push_back({"prefill causal B1 L16384", 1, 16384, 16384, hkv, paged});
      ws.push_back({"prefill causal B16 L1024", 16, 1024, 1024, hkv, paged});
      // 128 new tokens after a 4096-token prefix (kv 4224): FlashInfer's append row (fi_peer.py).
      // Until 2026-12-02 this row had kv 4096 in all (a 3968-token prefix).
      ws.push_back({"append 128 onto 4096 B16", 16, 128, 4096 + 128, hkv, paged});
      // Short queries on a long cache: split-KV's case (unsplit, num_kv_heads CTAs).
      ws.push_back({"append 16 onto 32768 B1", 1, 16, 32768, hkv, paged});
      ws.push_back({"append 128 onto 32768 B2", 2, 128, 32768, hkv, paged});
    }
  }
  std::vector<std::string> json;
  for (const auto& w : ws) RunWorkload(w, quick, main_tile.c_str(), json);
  // The split-KV shapes with splitting off (the same kernel on num_kv_heads x tiles CTAs).
  for (int hkv : {32, 8}) {
    Workload w{"[no split] append 16 onto 32768 B1", 1, 16, 32768, hkv, true};
    w.no_split = true;
    RunWorkload(w, quick, main_tile.c_str(), json);
  }
  // Diagnostic: the same paged shapes with the pages in order (isolates the cost of scattered
  // pages in the memory system, TLB and DRAM, from the kernel's own paged-address work).
  for (int hkv : {32, 8}) {
    RunWorkload({"[pages in order] B1 L16384", 1, 16384, 16384, hkv, true, true}, quick,
                main_tile.c_str(), json);
    RunWorkload({"[pages in order] B16 L1024", 16, 1024, 1024, hkv, true, true}, quick,
                main_tile.c_str(), json);
  }
  if (rope) {
    for (Workload w : ws) {
      if (!w.paged) continue;
      w.rope = true;
      RunWorkload(w, quick, "rope", json);
    }
  }
  if (wide) {
    for (const char* variant : {"default", "wide", "wide3", "wide64", "sm90"}) {
      for (const auto& w : ws) RunWorkload(w, quick, variant, json);
    }
  }
  for (const auto& j : json) std::printf("JSON %s\n", j.c_str());
  return 0;
}
