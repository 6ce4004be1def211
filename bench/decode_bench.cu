// Decode benchmark: attnd's paged batch decode (PrepareDecode + RunPagedDecode, split-KV and
// merge included) on the HOST.md shapes: fp16/bf16, 32 query heads, 32 or 8 KV heads, head_dim
// 128, page size 16, pages in random order, KV cold in L2 (flushed before every timed run).
// Counted bytes: K and V read once, 2 * B * kv * H_kv * D * 2 (FlashInfer's convention; q/o are
// < 0.1%). Prints a table and JSON lines, with % of the measured copy ceiling (read + write).
// Two timings per row: "ms" after bench_util's flush (a memset over 2x L2, the peers' method:
// it leaves ~L2-size of DIRTY lines that are written back while the kernel reads, e.g. ~60 MB of
// writes on top of the 134 MB read at B=1 GQA), and "ms_clean" after a read-only pass over
// another 2x-L2 buffer (L2 holds clean, unrelated lines: cold KV without the write-back).
//   decode_bench [--quick] [--sweep] [--rope] [--only B,KV_LEN,NUM_KV_HEADS] [--skew]
//     --skew: only the skewed-batch rows (RunSkew: one long request among short ones, the
//     planner's load balancing on and off, and the uniform batches they compare with).
//     --graph: a 32-layer step captured into a CUDA graph and replayed (RunGraph): host times.
//     --sweep: also split-KV grids of other sizes (DecodeScheduleOptions::waves: 0.5-4 waves at
//     B=1; 2-8 waves at larger batches, where splitting trims the tail of the last wave).
//     --rope: every row with RoPE on the fly (the kernels' RoPE variants: K rotated in fp32,
//     hi + lo operands on tensor cores, kernels/cuda/NUMERICS.md); JSON "rope":true.
// After the fp16/bf16 rows: FP8 K/V (e4m3 on every shape, e5m2 on the GQA-4 ones) under fp16
// queries, per-KV-head scales; JSON "kv_dtype":"e4m3"|"e5m2", its TB/s counting the fp8 bytes
// actually read (2 * B * kv * H_kv * D * 1), "x_fp16": the fp16 row's time over this one.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "attnd/kernels/cuda_launch.h"
#include "bench_util.h"

namespace {

using namespace attnd::bench;
using attnd::kernels::DType;
namespace kcuda = attnd::kernels::cuda;

struct Shape {
  int batch, kv_len, num_kv_heads;
  int long_kv_len = 0;  // > 0: the last request has this length (a skewed batch), the rest kv_len
  int64_t Tokens() const {
    return long_kv_len > 0 ? int64_t{batch - 1} * kv_len + long_kv_len : int64_t{batch} * kv_len;
  }
};

// Read-only sweep over a buffer (evicts whatever L2 held, leaves clean lines behind).
__global__ void ReadSweepKernel(const uint4* __restrict__ src, size_t n, uint4* sink) {
  uint4 acc = make_uint4(0, 0, 0, 0);
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint4 v = src[i];
    acc.x ^= v.x;
    acc.y ^= v.y;
    acc.z ^= v.z;
    acc.w ^= v.w;
  }
  if (acc.x == 0x12345678u && acc.y == 0x9abcdef0u) *sink = acc;  // keeps the loads alive
}

class CleanFlusher {
 public:
  CleanFlusher() {
    int dev = 0, l2 = 0;
    BENCH_CUDA_CHECK(cudaGetDevice(&dev));
    BENCH_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    BENCH_CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, dev));
    bytes_ = std::max<size_t>(2 * static_cast<size_t>(l2), 64u << 20) / 16 * 16;
    BENCH_CUDA_CHECK(cudaMalloc(&buf_, bytes_ + 16));
    BENCH_CUDA_CHECK(cudaMemset(buf_, 3, bytes_ + 16));
  }
  ~CleanFlusher() { cudaFree(buf_); }
  void Flush(cudaStream_t s) {
    ReadSweepKernel<<<sms_ * 4, 512, 0, s>>>(
        static_cast<const uint4*>(buf_), bytes_ / 16,
        reinterpret_cast<uint4*>(static_cast<char*>(buf_) + bytes_));
    BENCH_CUDA_CHECK(cudaGetLastError());
  }
  // Read-only bandwidth (TB/s) of the sweep itself over `bytes` (a ceiling for decode, which
  // only reads).
  static double ReadCeilingTBps(cudaStream_t s) {
    const size_t bytes = size_t{1} << 31;
    DeviceMemory src(bytes + 16);
    BENCH_CUDA_CHECK(cudaMemsetAsync(src.get(), 1, bytes + 16, s));
    int dev = 0, sms = 0;
    BENCH_CUDA_CHECK(cudaGetDevice(&dev));
    BENCH_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    TimingOptions opt;
    opt.flush_l2 = false;
    opt.reps = 20;
    const Timing t = TimeIt(
        [&](int) {
          ReadSweepKernel<<<sms * 8, 512, 0, s>>>(src.as<const uint4>(), bytes / 16,
                                                  reinterpret_cast<uint4*>(src.as<char>() + bytes));
        },
        s, opt);
    return bytes / (t.median_ms * 1e-3) / 1e12;
  }

 private:
  void* buf_ = nullptr;
  size_t bytes_ = 0;
  int sms_ = 0;
};

// Like TimeIt, but with CleanFlusher before every timed call.
Timing TimeClean(const std::function<void(int)>& fn, cudaStream_t stream, int reps = 30) {
  static CleanFlusher* flusher = new CleanFlusher();
  return TimeBetweenEvents(fn, stream, /*warmup=*/3, reps,
                           [](cudaStream_t s) { flusher->Flush(s); });
}

struct Result {
  std::string dtype, kv_dtype;  // kv_dtype: "" = dtype
  Shape s;
  double ms, tbps, pct;
  double ms_clean = 0, tbps_clean = 0;
  int chunks;
  bool tc;
  float waves;
  bool balance = true, balanced = false;  // the option, and whether the plan used it
};

using Kernel = kcuda::DecodeScheduleOptions::Kernel;

bool g_rope = false;  // --rope

// A batch's page table over kv_len (pages of ps tokens, in random order, seed 42) in device
// memory: Bind points a PagedKV's indptr / indices / last_page_len at it.
class BenchPageTable {
 public:
  BenchPageTable(const std::vector<int32_t>& kv_len, int ps)
      : host_(Layout(kv_len, ps)),
        d_indptr_(host_.indptr.size() * 4),
        d_indices_(static_cast<size_t>(num_pages()) * 4),
        d_last_(host_.last.size() * 4) {
    std::vector<int32_t> perm(num_pages());
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937(42));
    BENCH_CUDA_CHECK(cudaMemcpy(d_indptr_.get(), host_.indptr.data(), host_.indptr.size() * 4,
                                cudaMemcpyHostToDevice));
    BENCH_CUDA_CHECK(
        cudaMemcpy(d_indices_.get(), perm.data(), perm.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA_CHECK(cudaMemcpy(d_last_.get(), host_.last.data(), host_.last.size() * 4,
                                cudaMemcpyHostToDevice));
  }
  int num_pages() const { return host_.indptr.back(); }
  void Bind(attnd::kernels::PagedKV& kv) const {
    kv.indptr = d_indptr_.as<int32_t>();
    kv.indices = d_indices_.as<int32_t>();
    kv.last_page_len = d_last_.as<int32_t>();
  }

 private:
  struct Host {
    std::vector<int32_t> indptr, last;  // [batch + 1], [batch]
  };
  static Host Layout(const std::vector<int32_t>& kv_len, int ps) {
    Host h;
    h.indptr.assign(1, 0);
    for (const int32_t len : kv_len) {
      const int pages = (len + ps - 1) / ps;
      h.indptr.push_back(h.indptr.back() + pages);
      h.last.push_back(len - (pages - 1) * ps);
    }
    return h;
  }
  Host host_;
  DeviceMemory d_indptr_, d_indices_, d_last_;
};

Result RunOne(DType dt, DType kv_dt, Shape s, Kernel kernel, float waves, double ceiling,
              bool clean, cudaStream_t stream, bool balance = true) {
  const int hq = 32, d = 128, ps = 16;
  std::vector<int32_t> kv_len(s.batch, s.kv_len);
  if (s.long_kv_len > 0) kv_len.back() = s.long_kv_len;
  const BenchPageTable table(kv_len, ps);
  const int num_pages = table.num_pages();
  attnd::kernels::PagedKV kv;
  kv.dtype = kv_dt;
  kv.num_pages = num_pages;
  kv.page_size = ps;
  kv.num_kv_heads = s.num_kv_heads;
  kv.head_dim = d;
  kv.SetNhdStrides();
  kv.batch_size = s.batch;
  const size_t kv_elems = static_cast<size_t>(num_pages) * kv.page_stride;
  const bool fp8 = attnd::kernels::IsFp8(kv_dt);
  const size_t kv_bytes = attnd::kernels::DTypeSize(kv_dt);
  DeviceMemory cache(kv_elems * kv_bytes);
  if (fp8) {
    FillRandomFp8(cache.get(), kv_elems, 17, kv_dt == DType::kFloat8E5M2);
  } else {
    FillRandom16(cache.get(), kv_elems, 17, kv_dt == DType::kBFloat16);
  }
  // FP8: per-KV-head scales (0.5 .. 2), so that the kernels' scale path is what is timed.
  std::vector<float> scales(2 * s.num_kv_heads);
  for (size_t i = 0; i < scales.size(); ++i) scales[i] = 0.5f + 1.5f * (i % 7) / 7.f;
  DeviceMemory d_scales(scales.size() * 4);
  BENCH_CUDA_CHECK(
      cudaMemcpy(d_scales.get(), scales.data(), scales.size() * 4, cudaMemcpyHostToDevice));
  if (fp8) {
    kv.k_scale = d_scales.as<float>();
    kv.v_scale = d_scales.as<float>() + s.num_kv_heads;
  }

  kv.data = cache.get();
  table.Bind(kv);

  DeviceMemory q(static_cast<size_t>(s.batch) * hq * d * 2), o(q.bytes());
  DeviceMemory lse(static_cast<size_t>(s.batch) * hq * 4);
  FillRandom16(q.get(), q.bytes() / 2, 5, dt == DType::kBFloat16);

  kcuda::DecodeScheduleOptions sched;
  sched.kernel = kernel;
  sched.waves = waves;
  sched.balance = balance;
  auto work = kcuda::PrepareDecode(kv_len, hq, s.num_kv_heads, d, ps, sched, stream);
  BENCH_STATUS_CHECK(work.status());
  const auto info = kcuda::GetDecodeScheduleInfo(**work);

  attnd::kernels::PagedAttentionParams p;
  p.kv = kv;
  p.qo.q = q.get();
  p.qo.o = o.get();
  p.qo.lse = nullptr;
  p.qo.q_dtype = dt;
  p.qo.num_qo_heads = hq;
  p.qo.batch_size = s.batch;
  if (g_rope) p.options.pos_encoding = attnd::kernels::PosEncoding::kRopeLlama;
  auto call = [&](int) { BENCH_STATUS_CHECK(kcuda::RunPagedDecode(**work, p, stream)); };
  const Timing t = TimeIt(call, stream);
  const double bytes = 2.0 * static_cast<double>(s.Tokens()) * s.num_kv_heads * d * kv_bytes;
  Result r;
  if (clean) {
    r.ms_clean = TimeClean(call, stream).median_ms;
    r.tbps_clean = bytes / (r.ms_clean * 1e-3) / 1e12;
  }
  r.dtype = dt == DType::kFloat16 ? "fp16" : "bf16";
  r.kv_dtype = !fp8 ? "" : kv_dt == DType::kFloat8E4M3 ? "e4m3" : "e5m2";
  r.s = s;
  r.ms = t.median_ms;
  r.tbps = bytes / (t.median_ms * 1e-3) / 1e12;
  r.pct = 100.0 * r.tbps / ceiling;
  r.chunks = info.num_chunks;
  r.tc = info.tensor_cores;
  r.waves = waves;
  r.balance = balance;
  r.balanced = info.balanced;
  return r;
}

// --skew: the load-balancing rows (issue 13): 63 requests of 512 and one of 32768 (last), fp16,
// GQA-4 and MHA, with the planner's balancing on and off; and the uniform batches they are
// compared with, B=64 of 1016 (the same 65024 tokens) and B=64 of 4096. JSON
// {"bench":"decode_skew", ..., "kv_len": the short length, "long_kv_len": 32768 or 0 (uniform),
// "balance": the option, "balanced": whether the plan cut the batch by it}.
void RunSkew(double ceiling, cudaStream_t stream) {
  struct Row {
    Shape s;
    bool balance;
  };
  std::vector<Row> rows;
  for (int hkv : {8, 32}) {
    rows.push_back({{64, 512, hkv, 32768}, true});
    rows.push_back({{64, 512, hkv, 32768}, false});
    rows.push_back({{64, 1016, hkv}, true});
    rows.push_back({{64, 4096, hkv}, true});
  }
  std::vector<Result> results;
  for (const Row& row : rows) {
    const Result r = RunOne(DType::kFloat16, DType::kFloat16, row.s, Kernel::kAuto, 1.f, ceiling,
                            /*clean=*/true, stream, row.balance);
    std::printf(
        "JSON {\"bench\":\"decode_skew\",\"dtype\":\"fp16\",\"batch\":%d,\"kv_len\":%d,"
        "\"long_kv_len\":%d,\"tokens\":%lld,\"num_qo_heads\":32,\"num_kv_heads\":%d,"
        "\"head_dim\":128,\"page_size\":16,\"kernel\":\"%s\",\"balance\":%s,"
        "\"balanced\":%s,\"ms\":%.5f,\"tbps\":%.4f,\"pct_copy\":%.2f,\"chunks\":%d,"
        "\"ms_clean\":%.5f,\"tbps_clean\":%.4f}\n",
        r.s.batch, r.s.kv_len, r.s.long_kv_len, static_cast<long long>(r.s.Tokens()),
        r.s.num_kv_heads, r.tc ? "tensor" : "cuda-core", r.balance ? "true" : "false",
        r.balanced ? "true" : "false", r.ms, r.tbps, r.pct, r.chunks, r.ms_clean, r.tbps_clean);
    std::fflush(stdout);
    results.push_back(r);
  }
  std::printf("\n%6s %7s %7s %4s %-9s %-8s %6s %9s %7s %6s %7s\n", "batch", "kv_len", "long", "Hkv",
              "kernel", "balance", "chunks", "ms", "TB/s", "%copy", "TB/s_cl");
  for (const Result& r : results) {
    std::printf("%6d %7d %7d %4d %-9s %-8s %6d %9.4f %7.3f %5.1f%% %7.3f\n", r.s.batch, r.s.kv_len,
                r.s.long_kv_len, r.s.num_kv_heads, r.tc ? "tensor" : "cuda-core",
                !r.balance   ? "off"
                : r.balanced ? "cut"
                             : "on",
                r.chunks, r.ms, r.tbps, r.pct, r.tbps_clean);
  }
}

// --graph: a 32-layer decode step (B=64 kv=4096, 8 KV heads, fp16; tensor cores) as 32
// RunPagedDecode calls on one graph-safe work (PrepareDecodeForGraph), captured into a CUDA graph
// and replayed, against the same 32 calls issued eagerly. Host time: the cudaGraphLaunch call
// alone, and the 32 eager calls' issue time (the stream idle before each, medians of 50);
// UpdateDecode's host time; GPU time of a replay and of the eager step (events). JSON
// {"bench":"decode_graph", ...}.
void RunGraph(cudaStream_t stream) {
  const int hq = 32, hkv = 8, d = 128, ps = 16, batch = 64, kv = 4096, layers = 32;
  const std::vector<int32_t> kv_len(batch, kv);
  const BenchPageTable table(kv_len, ps);
  const int num_pages = table.num_pages();
  attnd::kernels::PagedKV view;
  view.dtype = DType::kFloat16;
  view.num_pages = num_pages;
  view.page_size = ps;
  view.num_kv_heads = hkv;
  view.head_dim = d;
  view.SetNhdStrides();
  view.batch_size = batch;
  const size_t kv_elems = static_cast<size_t>(num_pages) * view.page_stride;
  DeviceMemory cache(kv_elems * 2);
  FillRandom16(cache.get(), kv_elems, 17, false);
  view.data = cache.get();
  table.Bind(view);
  DeviceMemory q(static_cast<size_t>(batch) * hq * d * 2);
  FillRandom16(q.get(), q.bytes() / 2, 5, false);
  std::vector<std::unique_ptr<DeviceMemory>> o;  // DeviceMemory does not move
  for (int l = 0; l < layers; ++l) o.push_back(std::make_unique<DeviceMemory>(q.bytes()));
  std::vector<attnd::kernels::PagedAttentionParams> params(layers);
  for (int l = 0; l < layers; ++l) {
    params[l].kv = view;
    params[l].qo.q = q.get();
    params[l].qo.o = o[l]->get();
    params[l].qo.q_dtype = DType::kFloat16;
    params[l].qo.num_qo_heads = hq;
    params[l].qo.batch_size = batch;
  }
  auto work = kcuda::PrepareDecodeForGraph(kv_len, batch, hq, hkv, d, ps,
                                           kcuda::DecodeScheduleOptions(), stream);
  BENCH_STATUS_CHECK(work.status());
  const auto eager = [&] {
    for (int l = 0; l < layers; ++l)
      BENCH_STATUS_CHECK(kcuda::RunPagedDecode(**work, params[l], stream));
  };
  eager();
  BENCH_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  BENCH_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  eager();
  BENCH_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  BENCH_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  size_t nodes = 0;
  BENCH_CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &nodes));

  using Clock = std::chrono::steady_clock;
  const auto us_since = [](Clock::time_point t0) {
    return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  };
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  cudaEvent_t e0, e1;
  BENCH_CUDA_CHECK(cudaEventCreate(&e0));
  BENCH_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<double> host_replay, host_eager, host_update, gpu_replay, gpu_eager;
  for (int rep = 0; rep < 55; ++rep) {
    const bool timed = rep >= 5;
    auto t0 = Clock::now();
    BENCH_STATUS_CHECK(kcuda::UpdateDecode(**work, kv_len, stream));
    if (timed) host_update.push_back(us_since(t0));
    BENCH_CUDA_CHECK(cudaStreamSynchronize(stream));
    BENCH_CUDA_CHECK(cudaEventRecord(e0, stream));
    t0 = Clock::now();
    BENCH_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    const double h = us_since(t0);
    BENCH_CUDA_CHECK(cudaEventRecord(e1, stream));
    BENCH_CUDA_CHECK(cudaStreamSynchronize(stream));
    float ms = 0;
    BENCH_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (timed) host_replay.push_back(h), gpu_replay.push_back(ms);
    BENCH_CUDA_CHECK(cudaEventRecord(e0, stream));
    t0 = Clock::now();
    eager();
    const double he = us_since(t0);
    BENCH_CUDA_CHECK(cudaEventRecord(e1, stream));
    BENCH_CUDA_CHECK(cudaStreamSynchronize(stream));
    BENCH_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (timed) host_eager.push_back(he), gpu_eager.push_back(ms);
  }
  const auto info = kcuda::GetDecodeScheduleInfo(**work);
  std::printf(
      "JSON {\"bench\":\"decode_graph\",\"dtype\":\"fp16\",\"batch\":%d,\"kv_len\":%d,"
      "\"num_qo_heads\":%d,\"num_kv_heads\":%d,\"head_dim\":%d,\"page_size\":%d,"
      "\"layers\":%d,\"graph_nodes\":%zu,\"kernel\":\"%s\",\"host_us_replay\":%.2f,"
      "\"host_us_eager\":%.2f,\"host_us_update\":%.2f,\"ms_replay\":%.4f,\"ms_eager\":%.4f}\n",
      batch, kv, hq, hkv, d, ps, layers, nodes, info.tensor_cores ? "tensor" : "cuda-core",
      median(host_replay), median(host_eager), median(host_update), median(gpu_replay),
      median(gpu_eager));
  std::printf(
      "graph: %d layers, %zu nodes: host %.2f us to launch the replay (eager: %.2f us to "
      "issue the 32 calls), UpdateDecode %.2f us; GPU %.4f ms replay, %.4f ms eager\n",
      layers, nodes, median(host_replay), median(host_eager), median(host_update),
      median(gpu_replay), median(gpu_eager));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, sweep = false, skew = false, graph = false;
  Shape only{0, 0, 0};  // --only B,KV,HKV: one shape (profiling)
  for (int i = 1; i < argc; ++i) {
    quick = quick || std::strcmp(argv[i], "--quick") == 0;
    sweep = sweep || std::strcmp(argv[i], "--sweep") == 0;
    g_rope = g_rope || std::strcmp(argv[i], "--rope") == 0;
    skew = skew || std::strcmp(argv[i], "--skew") == 0;
    graph = graph || std::strcmp(argv[i], "--graph") == 0;
    if (std::strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
      if (std::sscanf(argv[++i], "%d,%d,%d", &only.batch, &only.kv_len, &only.num_kv_heads) != 3) {
        std::fprintf(stderr, "--only B,KV_LEN,NUM_KV_HEADS\n");
        return 2;
      }
    }
  }
  PrintDeviceLine();
  cudaStream_t stream;
  BENCH_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const double ceiling = MeasureCopyCeilingTBps(stream);
  std::printf("copy ceiling: %.2f TB/s (read + write)\n", ceiling);
  std::printf("JSON {\"bench\":\"copy\",\"tbps\":%.4f}\n", ceiling);
  const double read_ceiling = CleanFlusher::ReadCeilingTBps(stream);
  std::printf("read-only ceiling: %.2f TB/s (2 GiB sweep, L2-warm start ignored)\n", read_ceiling);
  if (graph) {
    RunGraph(stream);
    cudaStreamDestroy(stream);
    return 0;
  }
  if (skew) {
    RunSkew(ceiling, stream);
    cudaStreamDestroy(stream);
    return 0;
  }
  std::vector<Shape> shapes = {{1, 32768, 32}, {1, 32768, 8},   {64, 4096, 32},
                               {64, 4096, 8},  {256, 2048, 32}, {256, 2048, 8}};
  if (only.batch > 0) shapes = {only};
  std::vector<Result> results;
  const auto print_json = [&](const Result& r, double x_fp16) {
    std::printf(
        "JSON {\"bench\":\"decode\",\"dtype\":\"%s\",%s%s%s\"batch\":%d,\"kv_len\":%d,"
        "\"num_qo_heads\":32,\"num_kv_heads\":%d,\"head_dim\":128,\"page_size\":16,"
        "\"kernel\":\"%s\",\"rope\":%s,\"waves\":%.2f,\"ms\":%.5f,\"tbps\":%.4f,"
        "\"pct_copy\":%.2f,\"chunks\":%d,\"ms_clean\":%.5f,\"tbps_clean\":%.4f",
        r.dtype.c_str(), r.kv_dtype.empty() ? "" : "\"kv_dtype\":\"", r.kv_dtype.c_str(),
        r.kv_dtype.empty() ? "" : "\",", r.s.batch, r.s.kv_len, r.s.num_kv_heads,
        r.tc ? "tensor" : "cuda-core", g_rope ? "true" : "false", r.waves, r.ms, r.tbps, r.pct,
        r.chunks, r.ms_clean, r.tbps_clean);
    if (x_fp16 > 0) std::printf(",\"x_fp16\":%.3f", x_fp16);
    std::printf("}\n");
    std::fflush(stdout);
  };
  for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
    if (quick && dt == DType::kBFloat16) continue;
    for (const Shape& s : shapes) {
      std::vector<Kernel> kernels = {Kernel::kAuto};
      if (32 / s.num_kv_heads >= 4) kernels.push_back(Kernel::kCudaCores);  // GQA: both paths
      std::vector<float> waves = {1.f};
      if (sweep) {
        waves = s.batch == 1 ? std::vector<float>{0.5f, 1.f, 2.f, 4.f}
                             : std::vector<float>{1.f, 2.f, 4.f, 8.f};
      }
      for (Kernel k : kernels) {
        for (float w : waves) {
          Result r = RunOne(dt, dt, s, k, w, ceiling, /*clean=*/w == 1.f, stream);
          print_json(r, 0);
          results.push_back(r);
        }
      }
    }
  }
  // FP8 K/V under fp16 queries, the planner's kernel; x_fp16 against the fp16 row of the shape.
  for (const Shape& s : shapes) {
    double fp16_ms = 0;
    for (const Result& r : results) {
      if (r.dtype == "fp16" && r.kv_dtype.empty() && r.s.batch == s.batch &&
          r.s.kv_len == s.kv_len && r.s.num_kv_heads == s.num_kv_heads && r.waves == 1.f &&
          fp16_ms == 0) {
        fp16_ms = r.ms;  // the first fp16 row of the shape: the automatic kernel
      }
    }
    for (DType kv : {DType::kFloat8E4M3, DType::kFloat8E5M2}) {
      if (kv == DType::kFloat8E5M2 && s.num_kv_heads != 8) continue;
      Result r =
          RunOne(DType::kFloat16, kv, s, Kernel::kAuto, 1.f, ceiling, /*clean=*/true, stream);
      print_json(r, fp16_ms > 0 ? fp16_ms / r.ms : 0);
      results.push_back(r);
    }
  }
  std::printf("\n%-5s %-5s %6s %7s %4s %-9s %5s %9s %7s %6s %6s %9s %7s\n", "dtype", "kv", "batch",
              "kv_len", "Hkv", "kernel", "waves", "ms", "TB/s", "%copy", "chunks", "ms_clean",
              "TB/s_cl");
  for (const Result& r : results) {
    std::printf("%-5s %-5s %6d %7d %4d %-9s %5.1f %9.4f %7.3f %5.1f%% %6d %9.4f %7.3f\n",
                r.dtype.c_str(), r.kv_dtype.empty() ? r.dtype.c_str() : r.kv_dtype.c_str(),
                r.s.batch, r.s.kv_len, r.s.num_kv_heads, r.tc ? "tensor" : "cuda-core", r.waves,
                r.ms, r.tbps, r.pct, r.chunks, r.ms_clean, r.tbps_clean);
  }
  cudaStreamDestroy(stream);
  return 0;
}
