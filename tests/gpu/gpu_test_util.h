// Shared harness of the GPU tests (tests/gpu/*_test.cu): device RAII buffers, random fills,
// output poisoning, error metrics and a PASS/FAIL/SKIP table.
//
// Method (see tests/gpu/README in run_all.sh): every output buffer is filled with 0xFF bytes
// before the kernel runs; 0xFFFF (fp16/bf16) and 0xFFFFFFFF (fp32) are NaN bit patterns, so an
// element the kernel never wrote is both "unwritten" and NaN and can never pass. Results are
// compared with the CPU reference by relative L2 error ||got - ref|| / ||ref|| in float64.
// A case whose head_dim the build trimmed (ATTND_CUDA_HEAD_DIMS) is a SKIP line, counted in the
// SUMMARY ("skipped N"); UNIMPLEMENTED for a head_dim that is compiled is a FAIL.
//
// Header-only, host code only (usable from .cu and .cc test files). Tests are programs, not
// request paths: a failing CUDA call prints where and exits with status 2.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "attnd/kernels/cuda_launch.h"
#include "attnd/kernels/float_convert.h"
#include "attnd/kernels/types.h"

namespace attnd::gpu_test {

using attnd::kernels::DType;

#define GT_CUDA_CHECK(expr)                                                         \
  do {                                                                              \
    cudaError_t gt_err_ = (expr);                                                   \
    if (gt_err_ != cudaSuccess) {                                                   \
      std::fprintf(stderr, "%s:%d: CUDA error %s (%s) in %s\n", __FILE__, __LINE__, \
                   cudaGetErrorName(gt_err_), cudaGetErrorString(gt_err_), #expr);  \
      std::exit(2);                                                                 \
    }                                                                               \
  } while (0)

// Exits when a Status-returning call fails (works with absl::Status without including absl).
#define GT_STATUS_CHECK(expr)                                                   \
  do {                                                                          \
    auto gt_st_ = (expr);                                                       \
    if (!gt_st_.ok()) {                                                         \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr, \
                   std::string(gt_st_.ToString()).c_str());                     \
      std::exit(2);                                                             \
    }                                                                           \
  } while (0)

// ---- dtype conversion (host) -----------------------------------------------------------------
inline size_t ElemSize(DType t) { return attnd::kernels::DTypeSize(t); }

// Host float values -> raw bytes of dtype t (fp32, fp16, bf16, fp8 e4m3 / e5m2; round to
// nearest even, fp8 saturating: attnd/kernels/float_convert.h, the CPU reference's own).
inline std::vector<uint8_t> EncodeAs(const std::vector<float>& x, DType t) {
  std::vector<uint8_t> out(x.size() * ElemSize(t));
  for (size_t i = 0; i < x.size(); ++i) attnd::kernels::StoreFromFloat(out.data(), t, i, x[i]);
  return out;
}

// Raw bytes of dtype t -> float values.
inline std::vector<float> DecodeFrom(const std::vector<uint8_t>& raw, DType t) {
  const size_t n = raw.size() / ElemSize(t);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = attnd::kernels::LoadAsFloat(raw.data(), t, i);
  return out;
}

// Rounds every value to dtype t and back, so that the CPU reference sees exactly the stored data.
inline void RoundTo(std::vector<float>& x, DType t) {
  for (float& v : x) v = attnd::kernels::RoundTo(t, v);
}

// True where the raw element still holds the poison pattern (all bytes 0xFF).
inline std::vector<uint8_t> UnwrittenMask(const std::vector<uint8_t>& raw, DType t) {
  size_t es = ElemSize(t);
  size_t n = raw.size() / es;
  std::vector<uint8_t> m(n, 0);
  for (size_t i = 0; i < n; ++i) {
    bool all = true;
    for (size_t k = 0; k < es; ++k) all = all && raw[i * es + k] == 0xFF;
    m[i] = all ? 1 : 0;
  }
  return m;
}

// ---- device memory ---------------------------------------------------------------------------
// An untyped cudaMalloc'd buffer, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0) GT_CUDA_CHECK(cudaMalloc(&ptr_, bytes_));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = o.ptr_;
      bytes_ = o.bytes_;
      o.ptr_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }
  ~DeviceBuffer() { Reset(); }

  // Allocates and uploads a host vector.
  template <typename T>
  static DeviceBuffer From(const std::vector<T>& host) {
    DeviceBuffer b(host.size() * sizeof(T));
    if (!host.empty()) {
      GT_CUDA_CHECK(cudaMemcpy(b.ptr_, host.data(), b.bytes_, cudaMemcpyHostToDevice));
    }
    return b;
  }

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

  // Fills with 0xFF bytes: NaN in fp16/bf16/fp32 and recognisable as "never written".
  void Poison() const {
    if (ptr_) GT_CUDA_CHECK(cudaMemset(ptr_, 0xFF, bytes_));
  }
  std::vector<uint8_t> Download() const {
    std::vector<uint8_t> h(bytes_);
    if (bytes_) GT_CUDA_CHECK(cudaMemcpy(h.data(), ptr_, bytes_, cudaMemcpyDeviceToHost));
    return h;
  }
  template <typename T>
  std::vector<T> DownloadAs() const {
    std::vector<T> h(bytes_ / sizeof(T));
    if (bytes_)
      GT_CUDA_CHECK(cudaMemcpy(h.data(), ptr_, h.size() * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }

 private:
  void Reset() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// ---- random data -----------------------------------------------------------------------------
class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  float Uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(gen_); }
  float Normal(float mean = 0.f, float stddev = 1.f) {
    return std::normal_distribution<float>(mean, stddev)(gen_);
  }
  int32_t Int(int32_t lo, int32_t hi_inclusive) {
    return std::uniform_int_distribution<int32_t>(lo, hi_inclusive)(gen_);
  }
  std::vector<float> NormalVector(size_t n, float stddev = 1.f) {
    std::vector<float> v(n);
    for (float& x : v) x = Normal(0.f, stddev);
    return v;
  }
  // A random permutation of 0..n-1 (e.g. page ids "in random order").
  std::vector<int32_t> Permutation(int32_t n) {
    std::vector<int32_t> p(n);
    for (int32_t i = 0; i < n; ++i) p[i] = i;
    std::shuffle(p.begin(), p.end(), gen_);
    return p;
  }
  std::mt19937_64& engine() { return gen_; }

 private:
  std::mt19937_64 gen_;
};

// ---- a random paged KV cache (host side) ------------------------------------------------
// One layer of NHD pages, [num_pages][2][page_size][num_kv_heads][head_dim], filled with random
// normal values rounded to `dtype` (so `values` is exactly what the device sees), plus a batch
// page table whose pages are a random permutation of all pages (extra_pages unused ones mixed
// in). kv_len[b] >= 1.
struct HostPagedCache {
  attnd::kernels::PagedKV view;  // geometry and strides; data/page-table pointers unset
  std::vector<float> values;     // [num_pages * 2 * page_size * num_kv_heads * head_dim]
  std::vector<int32_t> kv_len, indptr, indices, last_page_len;
  // FP8 caches (SetFp8Scales): [num_kv_heads] dequantization scales of K and V (the device view
  // gets them), and the values they stand for (values x scale, float32 products as the CPU
  // reference forms them), which the host view reads.
  std::vector<float> k_scale, v_scale, dequantized;

  // The view with host pointers (for the CPU reference, data as float32).
  attnd::kernels::PagedKV HostView() {
    attnd::kernels::PagedKV v = view;
    v.data = dequantized.empty() ? values.data() : dequantized.data();
    v.dtype = DType::kFloat32;
    v.indptr = indptr.data();
    v.indices = indices.data();
    v.last_page_len = last_page_len.data();
    return v;
  }
};

inline HostPagedCache MakeRandomPagedCache(Rng& rng, const std::vector<int32_t>& kv_len,
                                           int32_t page_size, int32_t num_kv_heads,
                                           int32_t head_dim, DType dtype, int32_t extra_pages = 3) {
  HostPagedCache c;
  c.kv_len = kv_len;
  int32_t used = 0;
  std::vector<int32_t> pages_per_request;
  for (int32_t len : kv_len) {
    const int32_t n = (len + page_size - 1) / page_size;
    pages_per_request.push_back(n);
    used += n;
  }
  const int32_t num_pages = used + extra_pages;
  std::vector<int32_t> perm = rng.Permutation(num_pages);
  c.indptr.push_back(0);
  int32_t next = 0;
  for (size_t b = 0; b < kv_len.size(); ++b) {
    for (int32_t i = 0; i < pages_per_request[b]; ++i) c.indices.push_back(perm[next++]);
    c.indptr.push_back(static_cast<int32_t>(c.indices.size()));
    c.last_page_len.push_back(kv_len[b] - (pages_per_request[b] - 1) * page_size);
  }
  c.view.dtype = dtype;
  c.view.num_pages = num_pages;
  c.view.page_size = page_size;
  c.view.num_kv_heads = num_kv_heads;
  c.view.head_dim = head_dim;
  c.view.SetNhdStrides();
  c.view.batch_size = static_cast<int32_t>(kv_len.size());
  c.values = rng.NormalVector(static_cast<size_t>(num_pages) * c.view.page_stride);
  if (attnd::kernels::IsFp8(dtype)) {
    // Magnitudes over 2^-12 .. 4 (normal, subnormal and the largest exponents of e4m3 after
    // rounding; subnormal e5m2 too): every conversion path of the kernels sees them.
    for (float& x : c.values) x = std::ldexp(x, rng.Int(-12, 1));
  }
  RoundTo(c.values, dtype);
  return c;
}

// Gives an fp8 cache per-KV-head scales (per_head; else one per tensor, repeated) in [0.25, 4).
inline void SetFp8Scales(HostPagedCache& c, Rng& rng, bool per_head) {
  const int32_t h = c.view.num_kv_heads;
  c.k_scale.assign(h, 0.f);
  c.v_scale.assign(h, 0.f);
  for (int32_t i = 0; i < h; ++i) {
    c.k_scale[i] = per_head || i == 0 ? std::exp2(rng.Uniform(-2.f, 2.f)) : c.k_scale[0];
    c.v_scale[i] = per_head || i == 0 ? std::exp2(rng.Uniform(-2.f, 2.f)) : c.v_scale[0];
  }
  c.dequantized = c.values;
  const int64_t hd = c.view.head_dim;
  for (size_t i = 0; i < c.dequantized.size(); ++i) {
    const int64_t in_page = static_cast<int64_t>(i) % c.view.page_stride;
    const bool is_v = in_page >= c.view.kv_stride;
    const int32_t head = static_cast<int32_t>((in_page % c.view.token_stride) / hd);
    c.dequantized[i] *= is_v ? c.v_scale[head] : c.k_scale[head];
  }
}

// The same cache in device memory (data in `dtype`, page table as int32).
struct DevicePagedCache {
  DeviceBuffer data, indptr, indices, last_page_len, k_scale, v_scale;
  attnd::kernels::PagedKV view;

  explicit DevicePagedCache(const HostPagedCache& h)
      : data(DeviceBuffer::From(EncodeAs(h.values, h.view.dtype))),
        indptr(DeviceBuffer::From(h.indptr)),
        indices(DeviceBuffer::From(h.indices)),
        last_page_len(DeviceBuffer::From(h.last_page_len)),
        k_scale(DeviceBuffer::From(h.k_scale.empty() ? std::vector<float>(1) : h.k_scale)),
        v_scale(DeviceBuffer::From(h.v_scale.empty() ? std::vector<float>(1) : h.v_scale)),
        view(h.view) {
    view.data = data.get();
    view.indptr = indptr.as<int32_t>();
    view.indices = indices.as<int32_t>();
    view.last_page_len = last_page_len.as<int32_t>();
    view.k_scale = h.k_scale.empty() ? nullptr : k_scale.as<float>();
    view.v_scale = h.v_scale.empty() ? nullptr : v_scale.as<float>();
  }
};

// Ragged K/V of dense rows [tokens][num_kv_heads][head_dim] (k and v in separate buffers).
inline attnd::kernels::RaggedKV DenseRaggedKv(const void* k, const void* v, DType dtype,
                                              int32_t num_kv_heads, int32_t head_dim, int32_t batch,
                                              const int32_t* indptr) {
  attnd::kernels::RaggedKV kv;
  kv.k = k;
  kv.v = v;
  kv.dtype = dtype;
  kv.num_kv_heads = num_kv_heads;
  kv.head_dim = head_dim;
  kv.stride_n = static_cast<int64_t>(num_kv_heads) * head_dim;
  kv.stride_h = head_dim;
  kv.batch_size = batch;
  kv.indptr = indptr;
  return kv;
}

// ---- comparison ------------------------------------------------------------------------------
struct Comparison {
  double rel_l2 = 0;         // ||got - ref||_2 / max(||ref||_2, tiny), over finite reference values
  double max_abs = 0;        // max |got - ref| over finite reference values
  int64_t count = 0;         // elements compared
  int64_t nan = 0;           // got is NaN (never acceptable)
  int64_t unwritten = 0;     // still the poison pattern
  int64_t inf_mismatch = 0;  // ref is +-inf and got differs, or got is inf where ref is finite
};

// got/ref: float values; unwritten: optional mask from UnwrittenMask (same length as got).
// Elements where `skip` (optional) is nonzero are not compared (e.g. sampled reference rows).
inline Comparison Compare(const std::vector<float>& got, const std::vector<float>& ref,
                          const std::vector<uint8_t>* unwritten = nullptr,
                          const std::vector<uint8_t>* skip = nullptr) {
  Comparison c;
  double err2 = 0, ref2 = 0;
  size_t n = std::min(got.size(), ref.size());
  if (got.size() != ref.size()) c.inf_mismatch += 1;  // a size mismatch never passes
  for (size_t i = 0; i < n; ++i) {
    if (skip && (*skip)[i]) continue;
    ++c.count;
    if (unwritten && (*unwritten)[i]) ++c.unwritten;
    float g = got[i], r = ref[i];
    if (std::isnan(g)) {
      ++c.nan;
      continue;
    }
    if (std::isinf(r) || std::isinf(g)) {
      if (g != r) ++c.inf_mismatch;
      continue;
    }
    double d = static_cast<double>(g) - r;
    err2 += d * d;
    ref2 += static_cast<double>(r) * r;
    c.max_abs = std::max(c.max_abs, std::fabs(d));
  }
  c.rel_l2 = std::sqrt(err2) / std::max(std::sqrt(ref2), 1e-30);
  if (ref2 == 0 && err2 == 0) c.rel_l2 = 0;
  return c;
}

// Default relative-L2 bounds for outputs stored in a dtype (inputs rounded to it, fp32 math).
inline double DefaultTolerance(DType t) {
  switch (t) {
    case DType::kFloat32: return 1e-5;
    case DType::kFloat16: return 2e-3;
    case DType::kBFloat16: return 1.2e-2;
    default: return 5e-2;
  }
}

// ---- result table ----------------------------------------------------------------------------
class ResultTable {
 public:
  explicit ResultTable(std::string suite) : suite_(std::move(suite)) {}

  // Records one checked output; returns whether it passed. NaN, unwritten elements and inf
  // mismatches always fail; otherwise rel_l2 must be <= tol.
  bool Add(const std::string& name, const Comparison& c, double tol) {
    bool pass = c.nan == 0 && c.unwritten == 0 && c.inf_mismatch == 0 && c.count > 0 &&
                c.rel_l2 <= tol && std::isfinite(c.rel_l2);
    rows_.push_back({name, c, tol, pass, ""});
    if (!pass) ++failures_;
    if (verbose_ || !pass) PrintRow(stdout, rows_.back());
    return pass;
  }
  // Records a check that is a plain condition (e.g. an expected error status).
  bool AddCheck(const std::string& name, bool pass, const std::string& note) {
    Comparison c;
    c.count = 1;
    rows_.push_back({name, c, 0, pass, note});
    if (!pass) ++failures_;
    if (verbose_ || !pass) PrintRow(stdout, rows_.back());
    return pass;
  }
  // Records a measured error against its bound: passes when value is finite and <= bound.
  bool AddBound(const std::string& name, double value, double bound, const std::string& detail) {
    const bool pass = std::isfinite(value) && value <= bound;
    char buf[96];
    std::snprintf(buf, sizeof(buf), "%.3e (bound %.1e) ", value, bound);
    return AddCheck(name, pass, buf + detail);
  }
  // Records a case that did not run (a head_dim trimmed from the build). Printed always.
  void AddSkip(const std::string& name, const std::string& reason) {
    ++skipped_;
    std::printf("SKIP   %-64s %s\n", name.c_str(), reason.c_str());
    skip_rows_.push_back(name + ": " + reason);
  }
  int skipped() const { return skipped_; }

  void set_verbose(bool v) { verbose_ = v; }
  int failures() const { return failures_; }
  size_t size() const { return rows_.size(); }

  // Prints every row (or only failures when only_failures) and a summary line.
  void Print(FILE* f, bool only_failures = false) const {
    std::fprintf(f, "\n== %s: %zu checks, %d failed ==\n", suite_.c_str(), rows_.size(), failures_);
    std::fprintf(f, "%-6s %-64s %10s %10s %9s %6s %6s %6s\n", "result", "case", "rel_l2", "max_abs",
                 "tol", "nan", "unwr", "inf");
    for (const auto& r : rows_) {
      if (only_failures && r.pass) continue;
      PrintRow(f, r);
    }
    for (const auto& r : skip_rows_) std::fprintf(f, "SKIP   %s\n", r.c_str());
    if (skipped_ > 0) {
      std::fprintf(f, "SUMMARY %s %s (%zu checks, %d failed, skipped %d)\n", suite_.c_str(),
                   failures_ == 0 ? "PASS" : "FAIL", rows_.size(), failures_, skipped_);
    } else {
      std::fprintf(f, "SUMMARY %s %s (%zu checks, %d failed)\n", suite_.c_str(),
                   failures_ == 0 ? "PASS" : "FAIL", rows_.size(), failures_);
    }
  }
  int ExitCode() const { return failures_ == 0 ? 0 : 1; }

 private:
  struct Row {
    std::string name;
    Comparison c;
    double tol;
    bool pass;
    std::string note;
  };
  static void PrintRow(FILE* f, const Row& r) {
    if (!r.note.empty()) {
      std::fprintf(f, "%-6s %-64s %s\n", r.pass ? "PASS" : "FAIL", r.name.c_str(), r.note.c_str());
      return;
    }
    std::fprintf(f, "%-6s %-64s %10.3e %10.3e %9.1e %6lld %6lld %6lld\n", r.pass ? "PASS" : "FAIL",
                 r.name.c_str(), r.c.rel_l2, r.c.max_abs, r.tol, (long long)r.c.nan,
                 (long long)r.c.unwritten, (long long)r.c.inf_mismatch);
  }
  std::string suite_;
  std::vector<Row> rows_;
  std::vector<std::string> skip_rows_;
  int failures_ = 0;
  int skipped_ = 0;
  bool verbose_ = false;
};

// After a call that may fail for a head_dim the build trimmed: returns true when the case is to
// be skipped (UNIMPLEMENTED and head_dim not compiled: a SKIP row) and records a FAIL when it
// says UNIMPLEMENTED although head_dim is compiled (a full build skips nothing).
inline bool SkipIfNotBuilt(ResultTable& table, const std::string& name, const absl::Status& s,
                           int32_t head_dim) {
  if (s.code() != absl::StatusCode::kUnimplemented) return false;
  if (!attnd::kernels::cuda::HeadDimCompiled(head_dim)) {
    table.AddSkip(name, "head_dim " + std::to_string(head_dim) + " not built");
  } else {
    table.AddCheck(name + " (UNIMPLEMENTED although head_dim is built)", false,
                   std::string(s.ToString()));
  }
  return true;
}

// An expected refusal: the status has `code` and its message contains `field` (the name of the
// offending parameter).
inline bool AddRefusal(ResultTable& table, const std::string& name, const absl::Status& s,
                       absl::StatusCode code, const std::string& field) {
  const bool pass = s.code() == code && std::string(s.message()).find(field) != std::string::npos;
  return table.AddCheck(name, pass, std::string(s.ToString()));
}

// The element-wise view of an error: max |got - ref| / max(|ref|, floor) and max |got - ref| over
// elements with a finite reference (NaN in got, or an inf mismatch, makes it infinite).
struct MaxError {
  double rel = 0;
  double abs = 0;
};
inline MaxError MaxElementError(const std::vector<float>& got, const std::vector<double>& ref,
                                double floor) {
  MaxError e;
  if (got.size() != ref.size() || got.empty()) return {INFINITY, INFINITY};
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i])) return {INFINITY, INFINITY};
    if (std::isinf(ref[i]) || std::isinf(got[i])) {
      if (static_cast<double>(got[i]) != ref[i]) return {INFINITY, INFINITY};
      continue;
    }
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    e.abs = std::max(e.abs, d);
    e.rel = std::max(e.rel, d / std::max(std::fabs(ref[i]), floor));
  }
  return e;
}

// ---- command line ----------------------------------------------------------------------------
// Flags every GPU test understands: --small (a few tiny cases, for compute-sanitizer),
// --verbose (print every row as it is checked), --seed=N.
struct TestFlags {
  bool small = false;
  bool verbose = false;
  uint64_t seed = 1234;
};
inline TestFlags ParseFlags(int argc, char** argv) {
  TestFlags f;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--small")
      f.small = true;
    else if (a == "--verbose")
      f.verbose = true;
    else if (a.substr(0, 7) == "--seed=")
      f.seed = std::strtoull(argv[i] + 7, nullptr, 10);
    else
      std::fprintf(stderr, "ignoring unknown flag %s\n", argv[i]);
  }
  return f;
}

// Prints the device the test runs on (first line of every test's output).
inline void PrintDevice() {
  int dev = 0;
  GT_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  GT_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  std::printf("device %d: %s (sm_%d%d, %d SMs, %.0f MB L2)\n", dev, p.name, p.major, p.minor,
              p.multiProcessorCount, p.l2CacheSize / 1e6);
}

}  // namespace attnd::gpu_test
