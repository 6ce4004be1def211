// append_kv benchmark: LaunchAppendKv writing new K/V rows into randomly ordered pages (fp16,
// head_dim 128, page size 16): decode steps (one row per request) and prefill chunks. Counted
// bytes: the new rows read once and written once, 2 * 2 * rows * H_kv * D * 2. Decode appends
// are tiny: their time is mostly launch latency, which is the point of measuring them.
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "attnd/kernels/cuda_launch.h"
#include "bench_util.h"

namespace {
using namespace attnd::bench;

struct Shape {
  int batch, rows_per_request, kv_len, num_kv_heads;
};

}  // namespace

int main() {
  PrintDeviceLine();
  cudaStream_t stream;
  BENCH_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const double ceiling = MeasureCopyCeilingTBps(stream);
  std::printf("copy ceiling: %.2f TB/s (read + write)\n", ceiling);
  const int d = 128, ps = 16;
  std::vector<Shape> shapes = {{64, 1, 4096, 8},   {256, 1, 2048, 32}, {1, 16384, 16384, 8},
                               {16, 128, 4096, 8}, {16, 1024, 1024, 32}};
  std::printf("\n%6s %6s %7s %5s %10s %8s %7s\n", "batch", "rows", "kv_len", "Hkv", "us", "TB/s",
              "%copy");
  for (const Shape& s : shapes) {
    const int pages_per_req = (s.kv_len + ps - 1) / ps;
    const int num_pages = s.batch * pages_per_req;
    attnd::kernels::PagedKV kv;
    kv.dtype = attnd::kernels::DType::kFloat16;
    kv.num_pages = num_pages;
    kv.page_size = ps;
    kv.num_kv_heads = s.num_kv_heads;
    kv.head_dim = d;
    kv.SetNhdStrides();
    kv.batch_size = s.batch;
    DeviceMemory cache(static_cast<size_t>(num_pages) * kv.page_stride * 2);
    std::vector<int32_t> perm(num_pages), indptr(s.batch + 1), new_indptr(s.batch + 1);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937(7));
    std::vector<int32_t> last(s.batch, s.kv_len - (pages_per_req - 1) * ps);
    for (int b = 0; b <= s.batch; ++b) {
      indptr[b] = b * pages_per_req;
      new_indptr[b] = b * s.rows_per_request;
    }
    DeviceMemory d_indptr(indptr.size() * 4), d_indices(perm.size() * 4), d_last(last.size() * 4),
        d_new(new_indptr.size() * 4);
    BENCH_CUDA_CHECK(cudaMemcpy(d_indptr.get(), indptr.data(), indptr.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA_CHECK(cudaMemcpy(d_indices.get(), perm.data(), perm.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA_CHECK(cudaMemcpy(d_last.get(), last.data(), last.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA_CHECK(cudaMemcpy(d_new.get(), new_indptr.data(), new_indptr.size() * 4, cudaMemcpyHostToDevice));
    kv.data = cache.get();
    kv.indptr = d_indptr.as<int32_t>();
    kv.indices = d_indices.as<int32_t>();
    kv.last_page_len = d_last.as<int32_t>();
    const size_t rows = static_cast<size_t>(s.batch) * s.rows_per_request;
    DeviceMemory k(rows * s.num_kv_heads * d * 2), v(k.bytes());
    FillRandom16(k.get(), k.bytes() / 2, 1, false);
    FillRandom16(v.get(), v.bytes() / 2, 2, false);
    attnd::kernels::AppendKvParams p;
    p.kv = kv;
    p.k = k.get();
    p.v = v.get();
    p.new_indptr = d_new.as<int32_t>();
    const Timing t = TimeIt(
        [&](int) { BENCH_STATUS_CHECK(attnd::kernels::cuda::LaunchAppendKv(p, stream)); }, stream);
    const double bytes = 2.0 * 2.0 * rows * s.num_kv_heads * d * 2;
    const double tbps = bytes / (t.median_ms * 1e-3) / 1e12;
    std::printf("JSON {\"bench\":\"append_kv\",\"batch\":%d,\"rows_per_request\":%d,\"kv_len\":%d,"
                "\"num_kv_heads\":%d,\"us\":%.3f,\"tbps\":%.4f}\n",
                s.batch, s.rows_per_request, s.kv_len, s.num_kv_heads, t.median_ms * 1e3, tbps);
    std::printf("%6d %6d %7d %5d %10.2f %8.3f %6.1f%%\n", s.batch, s.rows_per_request, s.kv_len,
                s.num_kv_heads, t.median_ms * 1e3, tbps, 100 * tbps / ceiling);
  }
  cudaStreamDestroy(stream);
  return 0;
}
