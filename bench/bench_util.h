// Shared helpers of the kernel benchmarks (bench/*_bench.cu; CUDA sources, device code allowed):
//   - CUDA-event timing of one call per iteration, after warm-up, median of many runs, with the
//     L2 cache flushed (a write over 2x its size) before every timed call, so inputs come cold
//     from device memory, as in serving;
//   - the copy-bandwidth ceiling (device-to-device copy, bytes read + written), measured once;
//   - random device fills (no host round trip for multi-GB caches);
//   - a result table and one JSON line per measurement (grep '^JSON ').
#pragma once

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace attnd::bench {

#define BENCH_CUDA_CHECK(expr)                                           \
  do {                                                                   \
    cudaError_t bench_err_ = (expr);                                     \
    if (bench_err_ != cudaSuccess) {                                     \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, \
                   cudaGetErrorString(bench_err_));                      \
      std::exit(2);                                                      \
    }                                                                    \
  } while (0)

#define BENCH_STATUS_CHECK(expr)                                         \
  do {                                                                   \
    auto bench_st_ = (expr);                                             \
    if (!bench_st_.ok()) {                                               \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, \
                   std::string(bench_st_.ToString()).c_str());           \
      std::exit(2);                                                      \
    }                                                                    \
  } while (0)

// A cudaMalloc'd buffer, freed on destruction.
class DeviceMemory {
 public:
  explicit DeviceMemory(size_t bytes) : bytes_(bytes) {
    BENCH_CUDA_CHECK(cudaMalloc(&ptr_, bytes_ == 0 ? 1 : bytes_));
  }
  ~DeviceMemory() { cudaFree(ptr_); }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// ---- random fill ------------------------------------------------------------------------------
// Fills 16-bit elements with pseudo-random values in about [-2, 2) (as fp16 or bf16 bits,
// chosen by bf16), never zeros or NaN: zeros would make the kernels look faster than real data.
// Element i's pseudo-random value, uniform in [-2, 2) (a hash of i and seed).
__device__ __forceinline__ float RandomValue(size_t i, uint32_t seed) {
  uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed ^ static_cast<uint32_t>(i >> 32);
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  return (static_cast<float>(x & 0xFFFFFF) / 16777216.f) * 4.f - 2.f;
}
__global__ void FillRandom16Kernel(uint16_t* p, size_t n, uint32_t seed, bool bf16) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float f = RandomValue(i, seed);
    uint16_t bits;
    if (bf16) {
      uint32_t u = __float_as_uint(f);
      bits = static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
    } else {
      bits = __half_as_ushort(__float2half_rn(f));
    }
    p[i] = bits;
  }
}
inline void FillRandom16(void* p, size_t n, uint32_t seed, bool bf16) {
  FillRandom16Kernel<<<1024, 256>>>(static_cast<uint16_t*>(p), n, seed, bf16);
  BENCH_CUDA_CHECK(cudaGetLastError());
}
// n fp8 elements (e4m3 unless e5m2) of uniform values in [-2, 2), saturating round to nearest.
__global__ void FillRandomFp8Kernel(uint8_t* p, size_t n, uint32_t seed, bool e5m2) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    p[i] =
        __nv_cvt_float_to_fp8(RandomValue(i, seed), __NV_SATFINITE, e5m2 ? __NV_E5M2 : __NV_E4M3);
  }
}
inline void FillRandomFp8(void* p, size_t n, uint32_t seed, bool e5m2) {
  FillRandomFp8Kernel<<<1024, 256>>>(static_cast<uint8_t*>(p), n, seed, e5m2);
  BENCH_CUDA_CHECK(cudaGetLastError());
}

// ---- L2 flush and timing ---------------------------------------------------------------------
class L2Flusher {
 public:
  L2Flusher() {
    int dev = 0, l2 = 0;
    BENCH_CUDA_CHECK(cudaGetDevice(&dev));
    BENCH_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    bytes_ = std::max<size_t>(2 * static_cast<size_t>(l2), 64u << 20);
    BENCH_CUDA_CHECK(cudaMalloc(&buf_, bytes_));
  }
  ~L2Flusher() { cudaFree(buf_); }
  void Flush(cudaStream_t s) { BENCH_CUDA_CHECK(cudaMemsetAsync(buf_, iter_++ & 0xFF, bytes_, s)); }

 private:
  void* buf_ = nullptr;
  size_t bytes_ = 0;
  int iter_ = 0;
};

struct TimingOptions {
  int warmup = 5;
  int reps = 30;
  bool flush_l2 = true;
};

struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
};

// Times fn(i) (which enqueues work on `stream`) once per iteration between two events, after
// `warmup` untimed calls; `flush(stream)`, when set, runs before every timed call, untimed.
inline Timing TimeBetweenEvents(const std::function<void(int)>& fn, cudaStream_t stream, int warmup,
                                int reps, const std::function<void(cudaStream_t)>& flush) {
  for (int i = 0; i < warmup; ++i) fn(i);
  BENCH_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaEvent_t a, b;
  BENCH_CUDA_CHECK(cudaEventCreate(&a));
  BENCH_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    if (flush) flush(stream);
    BENCH_CUDA_CHECK(cudaEventRecord(a, stream));
    fn(warmup + i);
    BENCH_CUDA_CHECK(cudaEventRecord(b, stream));
    BENCH_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    BENCH_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  BENCH_CUDA_CHECK(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  Timing r;
  r.median_ms = ms[ms.size() / 2];
  r.min_ms = ms.front();
  r.max_ms = ms.back();
  return r;
}

// TimeBetweenEvents with the options, flushing L2 (L2Flusher) before every timed call by default.
inline Timing TimeIt(const std::function<void(int)>& fn, cudaStream_t stream,
                     const TimingOptions& opt = {}) {
  static L2Flusher* flusher = new L2Flusher();  // one per process, never freed
  std::function<void(cudaStream_t)> flush;
  if (opt.flush_l2) flush = [](cudaStream_t s) { flusher->Flush(s); };
  return TimeBetweenEvents(fn, stream, opt.warmup, opt.reps, flush);
}

// ---- copy ceiling ------------------------------------------------------------------------------
__global__ void CopyKernel(const uint4* __restrict__ src, uint4* __restrict__ dst, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    dst[i] = src[i];
  }
}

// Device-to-device copy bandwidth in TB/s (bytes read + bytes written), the best of
// cudaMemcpyAsync and a 16-byte grid-stride copy kernel, over 1 GiB buffers.
inline double MeasureCopyCeilingTBps(cudaStream_t stream) {
  const size_t bytes = size_t{1} << 30;
  DeviceMemory src(bytes), dst(bytes);
  BENCH_CUDA_CHECK(cudaMemsetAsync(src.get(), 1, bytes, stream));
  int dev = 0, sms = 0;
  BENCH_CUDA_CHECK(cudaGetDevice(&dev));
  BENCH_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  TimingOptions opt;
  opt.flush_l2 = false;
  opt.reps = 20;
  const Timing t1 = TimeIt(
      [&](int) {
        BENCH_CUDA_CHECK(
            cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, stream));
      },
      stream, opt);
  const Timing t2 = TimeIt(
      [&](int) {
        CopyKernel<<<sms * 8, 512, 0, stream>>>(src.as<uint4>(), dst.as<uint4>(), bytes / 16);
      },
      stream, opt);
  const double best_ms = std::min(t1.median_ms, t2.median_ms);
  return 2.0 * bytes / (best_ms * 1e-3) / 1e12;
}

inline void PrintDeviceLine() {
  int dev = 0;
  BENCH_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  BENCH_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  std::printf("device: %s (sm_%d%d, %d SMs, %.0f MB L2, %.0f GiB)\n", p.name, p.major, p.minor,
              p.multiProcessorCount, p.l2CacheSize / 1e6, p.totalGlobalMem / 1073741824.0);
}

}  // namespace attnd::bench
