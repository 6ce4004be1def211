// Service benchmark (GPU host): decode attention called in-process through the CUDA launch API
// versus the same work through attnd over a unix socket, SYNC and ASYNC completion.
// Shape (issue 4): batch 64, kv 4096 per request, 32 query / 8 KV heads, head_dim 128, page 16,
// fp16, 32 layers. The bench starts `attnd --backend=cuda` itself (next to this binary, or
// $ATTND_BIN), creates the pool there, and the in-process baseline runs the kernel on the SAME
// pool memory (opened through PoolInfo.cuda_ipc_handle), so both read identical pages.
//   per-layer latency: in-process = GPU time of one layer's kernel (CUDA events);
//                      sync = wall time of one Run call (enqueue + kernel + reply);
//                      async = wall time of one Run call (reply once enqueued).
//   per-step time: wall time of CreatePlan (attnd modes; in-process: none, the schedule is
//                  reused) + 32 layers, until the outputs are ready on the engine's stream.
//   "attnd ASYNC, DecodeBatch": the engine loop of a real decode step through client::DecodeBatch
//                  (issue 14 items 1 and 5): the plan lives across steps; each step every request
//                  gets one more token (lengths staggered so that 4 of the 64 requests cross into
//                  a new page per step: 64 tokens appended, 4 new pages) and only those deltas go
//                  out (UpdatePlan); "plan p50" is then the wall time of DecodeBatch::Step() (the
//                  page-table update end to end: AllocatePages for the new pages + UpdatePlan),
//                  the step adds the 32 ASYNC layers. Its kv lengths grow by one token a step
//                  (4081..4096 + step), the other modes' stay at 4096.
// Prints a table and one JSON line per mode.
#include <cuda_runtime.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "attnd/client/cuda_ipc.h"
#include "attnd/client/decode_batch.h"
#include "attnd/client/session.h"
#include "attnd/kernels/cuda_launch.h"
#include "daemon_child.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace {

namespace v1 = ::attnd::v1;
namespace kn = ::attnd::kernels;
using Clock = std::chrono::steady_clock;

using attnd::gpu_host::Must;

constexpr int kBatch = 64, kKvLen = 4096, kQoHeads = 32, kKvHeads = 8, kHeadDim = 128;
constexpr int kPageSize = 16, kLayers = 32, kWarmupSteps = 3, kSteps = 20;
constexpr int kPagesPerSeq = kKvLen / kPageSize;

double Us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

struct Stats {
  double p50 = 0, p99 = 0, mean = 0;
};
Stats Summarize(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.p50 = v[v.size() / 2];
  s.p99 = v[std::min(v.size() - 1, static_cast<size_t>(v.size() * 0.99))];
  for (double x : v) s.mean += x;
  s.mean /= v.size();
  return s;
}

struct ModeResult {
  std::string mode;
  Stats layer{}, step{};
  double plan_p50 = 0;
};

v1::Tensor Slice(const std::string& buffer, uint64_t offset) {
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_FLOAT16);
  t.add_shape(kBatch);
  t.add_shape(kQoHeads);
  t.add_shape(kHeadDim);
  t.mutable_buffer()->set_buffer_id(buffer);
  t.mutable_buffer()->set_offset_bytes(offset);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  std::string attnd_bin;
  if (const char* env = std::getenv("ATTND_BIN")) attnd_bin = env;
  if (attnd_bin.empty()) {
    attnd_bin = attnd::gpu_host::AttndNextTo(argv[0]);
  }
  (void)argc;
  char dir_template[] = "/tmp/attnd-bench-XXXXXX";
  const std::string socket = std::string(mkdtemp(dir_template)) + "/attnd.sock";
  const pid_t daemon = attnd::gpu_host::SpawnCudaDaemon(attnd_bin, socket, "warn");
  attnd::client::SessionOptions so;
  so.client_name = "service-bench";
  auto session =
      Must(attnd::client::Session::Open(
               grpc::CreateChannel("unix://" + socket, grpc::InsecureChannelCredentials()), so),
           "open session");
  auto info = Must(session->GetServerInfo(), "info");
  attnd::client::PoolSpec spec;
  spec.name = "bench";
  spec.num_layers = kLayers;
  spec.num_kv_heads = kKvHeads;
  spec.head_dim = kHeadDim;
  spec.page_size = kPageSize;
  // + the pages DecodeBatch takes as its requests grow (at most two each over the steps).
  spec.num_pages = kBatch * kPagesPerSeq + 2 * kBatch;
  auto pool = Must(session->CreatePool(spec), "create pool");
  auto grant = Must(session->AllocatePages(pool.pool_id(), kBatch * kPagesPerSeq), "allocate");
  // Pages in a shuffled order (as a serving engine's would be).
  std::vector<int32_t> pages = grant.page_ids;
  for (size_t i = pages.size() - 1; i > 0; --i)
    std::swap(pages[i], pages[(i * 2654435761u) % (i + 1)]);

  CK(cudaSetDevice(0));
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  void* pool_map = nullptr;
  {
    cudaIpcMemHandle_t h;
    std::memcpy(&h, pool.cuda_ipc_handle().data(), sizeof(h));
    CK(cudaIpcOpenMemHandle(&pool_map, h, cudaIpcMemLazyEnablePeerAccess));
  }
  // Random-ish K/V (the pool was zeroed): fill every layer with a byte pattern of small halfs.
  CK(cudaMemset(static_cast<char*>(pool_map) + pool.base_offset_bytes(), 0x2A,
                pool.layer_stride_bytes() * kLayers));
  const size_t qo_layer_bytes = size_t{kBatch} * kQoHeads * kHeadDim * 2;
  void *d_q = nullptr, *d_o = nullptr;
  CK(cudaMalloc(&d_q, qo_layer_bytes * kLayers));
  CK(cudaMalloc(&d_o, qo_layer_bytes * kLayers));
  CK(cudaMemset(d_q, 0x2A, qo_layer_bytes * kLayers));
  auto b_q = Must(
      attnd::client::cuda::RegisterDeviceBuffer(*session, d_q, qo_layer_bytes * kLayers), "reg q");
  auto b_o = Must(
      attnd::client::cuda::RegisterDeviceBuffer(*session, d_o, qo_layer_bytes * kLayers), "reg o");

  std::vector<int32_t> indptr{0}, last(kBatch, kPageSize), kv_len(kBatch, kKvLen);
  for (int b = 0; b < kBatch; ++b) indptr.push_back((b + 1) * kPagesPerSeq);
  v1::CreatePlanRequest plan_req;
  plan_req.set_pool_id(pool.pool_id());
  plan_req.set_kind(v1::ATTENTION_KIND_DECODE);
  plan_req.set_num_qo_heads(kQoHeads);
  for (int32_t x : indptr) plan_req.add_kv_indptr(x);
  for (int32_t x : pages) plan_req.add_kv_indices(x);
  for (int32_t x : last) plan_req.add_kv_last_page_len(x);

  std::vector<ModeResult> results;

  // ---- in-process: the kernel through the CUDA launch API, on the same pool memory ----------
  {
    int32_t* d_table = nullptr;
    CK(cudaMalloc(&d_table, (indptr.size() + pages.size() + last.size()) * 4));
    CK(cudaMemcpy(d_table, indptr.data(), indptr.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_table + indptr.size(), pages.data(), pages.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_table + indptr.size() + pages.size(), last.data(), last.size() * 4,
                  cudaMemcpyHostToDevice));
    auto work = Must(kn::cuda::PrepareDecode(kv_len, kQoHeads, kKvHeads, kHeadDim, kPageSize,
                                             kn::cuda::DecodeScheduleOptions(), stream),
                     "prepare decode");
    std::vector<cudaEvent_t> ev(kLayers + 1);
    for (auto& e : ev) CK(cudaEventCreate(&e));
    ModeResult r{"in-process (launch API)"};
    std::vector<double> layer_us, step_us;
    for (int step = 0; step < kWarmupSteps + kSteps; ++step) {
      const auto t0 = Clock::now();
      CK(cudaEventRecord(ev[0], stream));
      for (int l = 0; l < kLayers; ++l) {
        kn::PagedAttentionParams p;
        p.kv.data =
            static_cast<char*>(pool_map) + pool.base_offset_bytes() + l * pool.layer_stride_bytes();
        p.kv.dtype = kn::DType::kFloat16;
        p.kv.num_pages = static_cast<int32_t>(pool.num_pages());
        p.kv.page_size = kPageSize;
        p.kv.num_kv_heads = kKvHeads;
        p.kv.head_dim = kHeadDim;
        p.kv.SetNhdStrides();
        p.kv.batch_size = kBatch;
        p.kv.indptr = d_table;
        p.kv.indices = d_table + indptr.size();
        p.kv.last_page_len = d_table + indptr.size() + pages.size();
        p.qo.q = static_cast<char*>(d_q) + l * qo_layer_bytes;
        p.qo.o = static_cast<char*>(d_o) + l * qo_layer_bytes;
        p.qo.q_dtype = kn::DType::kFloat16;
        p.qo.num_qo_heads = kQoHeads;
        p.qo.batch_size = kBatch;
        auto s = kn::cuda::RunPagedDecode(*work, p, stream);
        if (!s.ok()) {
          std::fprintf(stderr, "RunPagedDecode: %s\n", s.ToString().c_str());
          return 2;
        }
        CK(cudaEventRecord(ev[l + 1], stream));
      }
      CK(cudaStreamSynchronize(stream));
      const double wall = Us(Clock::now() - t0);
      if (step < kWarmupSteps) continue;
      step_us.push_back(wall);
      for (int l = 0; l < kLayers; ++l) {
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, ev[l], ev[l + 1]));
        layer_us.push_back(ms * 1000.0);
      }
    }
    r.layer = Summarize(layer_us);
    r.step = Summarize(step_us);
    results.push_back(r);
    cudaFree(d_table);
  }

  // ---- through attnd: SYNC and ASYNC -----------------------------------------------------
  auto ready = Must(attnd::client::cuda::EngineEvent::Create(*session), "engine event");
  auto done = Must(attnd::client::cuda::CompletionEvent::Open(*session), "completion event");
  for (int mode = 0; mode < 2; ++mode) {
    const bool async = mode == 1;
    ModeResult r{async ? "attnd ASYNC (unix socket)" : "attnd SYNC (unix socket)"};
    std::vector<double> layer_us, step_us, plan_us;
    for (int step = 0; step < kWarmupSteps + kSteps; ++step) {
      const auto t0 = Clock::now();
      auto plan = Must(session->CreatePlan(plan_req), "plan");
      const auto t_plan = Clock::now();
      if (async) CK(cudaEventRecord(ready->native(), stream));  // q written on `stream`
      std::vector<double> layers;
      for (int l = 0; l < kLayers; ++l) {
        v1::RunRequest run;
        run.set_plan_id(plan.plan_id());
        run.set_layer(l);
        *run.mutable_q() = Slice(b_q, l * qo_layer_bytes);
        *run.mutable_o() = Slice(b_o, l * qo_layer_bytes);
        if (async) {
          run.set_completion(v1::COMPLETION_ASYNC);
          if (l == 0) run.set_wait_event_id(ready->id());
        }
        const auto a = Clock::now();
        Must(session->Run(run), "run");
        layers.push_back(Us(Clock::now() - a));
      }
      if (async) {
        if (auto s = done->WaitOn(stream); !s.ok()) return 2;
      }
      CK(cudaStreamSynchronize(stream));
      const double wall = Us(Clock::now() - t0);
      if (!session->DeletePlan(plan.plan_id()).ok()) return 2;
      if (step < kWarmupSteps) continue;
      step_us.push_back(wall);
      plan_us.push_back(Us(t_plan - t0));
      layer_us.insert(layer_us.end(), layers.begin(), layers.end());
    }
    r.layer = Summarize(layer_us);
    r.step = Summarize(step_us);
    r.plan_p50 = Summarize(plan_us).p50;
    results.push_back(r);
  }

  // ---- through attnd with client::DecodeBatch: one plan across steps, deltas only ------------
  {
    ModeResult r{"attnd ASYNC, DecodeBatch"};
    std::vector<double> layer_us, step_us, plan_us;
    attnd::client::PlanSpec defaults;
    defaults.num_qo_heads = kQoHeads;
    attnd::client::DecodeBatch batch(*session, pool.pool_id(), kPageSize, defaults);
    // Request b: kKvLen - b % 16 tokens in its 256 pages (the bench's pages, not the batch's).
    for (int b = 0; b < kBatch; ++b) {
      std::vector<int32_t> own(pages.begin() + b * kPagesPerSeq,
                               pages.begin() + (b + 1) * kPagesPerSeq);
      Must(batch.Join(std::move(own), kKvLen - b % kPageSize, /*owns_pages=*/false), "join");
    }
    for (int step = 0; step < kWarmupSteps + kSteps; ++step) {
      const auto t0 = Clock::now();
      if (auto s = batch.Step(); !s.ok()) {
        std::fprintf(stderr, "DecodeBatch::Step: %s\n", s.ToString().c_str());
        return 2;
      }
      const auto t_plan = Clock::now();
      CK(cudaEventRecord(ready->native(), stream));
      std::vector<double> layers;
      for (int l = 0; l < kLayers; ++l) {
        attnd::client::RunArgs run;
        run.layer = l;
        run.q = Slice(b_q, l * qo_layer_bytes);
        run.o = Slice(b_o, l * qo_layer_bytes);
        run.completion = v1::COMPLETION_ASYNC;
        if (l == 0) run.wait_event_id = ready->id();
        const auto a = Clock::now();
        Must(batch.Run(std::move(run)), "run");
        layers.push_back(Us(Clock::now() - a));
      }
      if (auto s = done->WaitOn(stream); !s.ok()) return 2;
      CK(cudaStreamSynchronize(stream));
      const double wall = Us(Clock::now() - t0);
      if (step < kWarmupSteps) continue;
      step_us.push_back(wall);
      plan_us.push_back(Us(t_plan - t0));
      layer_us.insert(layer_us.end(), layers.begin(), layers.end());
    }
    r.layer = Summarize(layer_us);
    r.step = Summarize(step_us);
    r.plan_p50 = Summarize(plan_us).p50;
    results.push_back(r);
  }

  std::printf(
      "service_bench on %s: decode B=%d kv=%d, %d q / %d kv heads, head_dim %d, page %d,"
      " fp16, %d layers; %d steps after %d warm-up\n",
      info.device().c_str(), kBatch, kKvLen, kQoHeads, kKvHeads, kHeadDim, kPageSize, kLayers,
      kSteps, kWarmupSteps);
  std::printf("%-28s %12s %12s %14s %14s %12s\n", "mode", "layer p50 us", "layer p99 us",
              "step p50 us", "step p99 us", "plan p50 us");
  for (const auto& r : results) {
    std::printf("%-28s %12.1f %12.1f %14.1f %14.1f %12.1f\n", r.mode.c_str(), r.layer.p50,
                r.layer.p99, r.step.p50, r.step.p99, r.plan_p50);
  }
  const double base = results[0].step.p50;
  for (size_t i = 1; i < results.size(); ++i) {
    std::printf("%s: step overhead vs in-process %+.1f%% (p50)\n", results[i].mode.c_str(),
                100.0 * (results[i].step.p50 - base) / base);
  }
  for (const auto& r : results) {
    std::printf(
        "{\"bench\":\"service\",\"mode\":\"%s\",\"layer_p50_us\":%.2f,\"layer_p99_us\":%.2f,"
        "\"step_p50_us\":%.2f,\"step_p99_us\":%.2f,\"plan_p50_us\":%.2f}\n",
        r.mode.c_str(), r.layer.p50, r.layer.p99, r.step.p50, r.step.p99, r.plan_p50);
  }
  cudaIpcCloseMemHandle(pool_map);
  (void)session->Close();
  kill(daemon, SIGTERM);
  int st = 0;
  waitpid(daemon, &st, 0);
  return 0;
}
