// Test helpers for the CPU reference: random problems in the paged layout, and an independent,
// deliberately naive float64 attention to compare against.
//
// The naive reference works on dense per-request K/V ([kv_len][num_kv_heads][head_dim] doubles,
// read back from exactly what was stored, so storage rounding is not an error), applies its own
// RoPE in double, builds every logit explicitly, and does a two-pass softmax in double. It shares
// no code with kernels/cpu beyond the scalar dtype conversions (tested on their own).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attnd/kernels/float_convert.h"
#include "attnd/kernels/types.h"
#include "gtest/gtest.h"

namespace attnd::kernels::testing {

inline constexpr double kInfD = std::numeric_limits<double>::infinity();

// One request's keys and values: [kv_len][num_kv_heads][head_dim].
struct DenseKv {
  int64_t kv_len = 0;
  std::vector<double> k, v;
};

struct NaiveResult {
  std::vector<double> o;    // [qo_nnz][num_qo_heads][head_dim]
  std::vector<double> lse;  // [qo_nnz][num_qo_heads]
};

// Rotates x (head_dim doubles) to `position` with LLaMA "rotate half".
inline void NaiveRope(std::vector<double>& x, double position, double theta, double scale) {
  const size_t dim = x.size(), half = dim / 2;
  std::vector<double> out(dim);
  for (size_t i = 0; i < half; ++i) {
    const double freq = 1.0 / std::pow(theta, static_cast<double>(2 * i) / dim);
    const double angle = position / scale * freq;
    out[i] = x[i] * std::cos(angle) - x[i + half] * std::sin(angle);
    out[i + half] = x[i + half] * std::cos(angle) + x[i] * std::sin(angle);
  }
  x = out;
}

// q: [qo_nnz][num_qo_heads][head_dim]; request b's rows are the qo_lens[b] rows after the previous
// requests'. rope_offsets: empty or [batch]. masks: empty (options.custom_mask is not read), or
// per request [qo_lens[b] * kv_len] bytes, nonzero = visible (row-major, the custom mask as a
// dense matrix).
inline NaiveResult NaiveAttention(const std::vector<DenseKv>& kv, const std::vector<int>& qo_lens,
                                  const std::vector<double>& q, int num_qo_heads, int num_kv_heads,
                                  int head_dim, const AttentionOptions& options,
                                  const std::vector<int32_t>& rope_offsets,
                                  const std::vector<std::vector<uint8_t>>& masks = {}) {
  const int group = num_qo_heads / num_kv_heads;
  const double scale = options.sm_scale != 0 ? options.sm_scale : 1.0 / std::sqrt(head_dim);
  const bool rope = options.pos_encoding == PosEncoding::kRopeLlama;
  NaiveResult result;
  int64_t row = 0;
  for (size_t b = 0; b < kv.size(); ++b) {
    const int64_t kv_len = kv[b].kv_len;
    const double offset = rope_offsets.empty() ? 0 : rope_offsets[b];
    // Keys as the logits see them: rotated to their positions when RoPE is on.
    std::vector<double> keys = kv[b].k;
    if (rope) {
      for (int64_t t = 0; t < kv_len; ++t) {
        for (int h = 0; h < num_kv_heads; ++h) {
          const auto first = keys.begin() + (t * num_kv_heads + h) * head_dim;
          std::vector<double> kvec(first, first + head_dim);
          NaiveRope(kvec, t + offset, options.rope_theta, options.rope_scale);
          std::copy(kvec.begin(), kvec.end(), first);
        }
      }
    }
    for (int i = 0; i < qo_lens[b]; ++i, ++row) {
      const int64_t position = kv_len - qo_lens[b] + i;
      for (int h = 0; h < num_qo_heads; ++h) {
        const int kvh = h / group;
        std::vector<double> qv(q.begin() + (row * num_qo_heads + h) * head_dim,
                               q.begin() + (row * num_qo_heads + h + 1) * head_dim);
        if (rope) NaiveRope(qv, position + offset, options.rope_theta, options.rope_scale);
        std::vector<double> logits(kv_len, -kInfD);
        for (int64_t t = 0; t < kv_len; ++t) {
          bool visible = true;
          if (options.causal && t > position) visible = false;
          if (options.window_left >= 0 && t < position - options.window_left) visible = false;
          if (!masks.empty() && masks[b][static_cast<size_t>(i) * kv_len + t] == 0) visible = false;
          if (!visible) continue;
          const double* kvec = &keys[(t * num_kv_heads + kvh) * head_dim];
          double s = 0;
          for (int d = 0; d < head_dim; ++d) s += qv[d] * kvec[d];
          s *= scale;
          if (options.logits_soft_cap > 0) {
            s = options.logits_soft_cap * std::tanh(s / options.logits_soft_cap);
          }
          logits[t] = s;
        }
        // The sink, when there is one, is one more logit of the softmax with no value.
        const double sink = options.sinks ? options.sinks[h] : -kInfD;
        const double max = std::max(
            sink, logits.empty() ? -kInfD : *std::max_element(logits.begin(), logits.end()));
        std::vector<double> o(head_dim, 0.0);
        double lse = -kInfD;
        if (max != -kInfD) {
          double sum = options.sinks ? std::exp(sink - max) : 0;
          for (int64_t t = 0; t < kv_len; ++t) sum += std::exp(logits[t] - max);
          for (int64_t t = 0; t < kv_len; ++t) {
            const double p = std::exp(logits[t] - max) / sum;
            if (p == 0) continue;
            for (int d = 0; d < head_dim; ++d) {
              o[d] += p * kv[b].v[(t * num_kv_heads + kvh) * head_dim + d];
            }
          }
          lse = max + std::log(sum);
        }
        result.o.insert(result.o.end(), o.begin(), o.end());
        result.lse.push_back(lse);
      }
    }
  }
  return result;
}

// Fills `count` elements of a dtype buffer with uniform values in [-amplitude, amplitude] and
// returns them as doubles (after rounding to the dtype, i.e. exactly what is stored).
inline std::vector<double> FillRandom(std::vector<uint8_t>& buffer, DType dtype, size_t count,
                                      double amplitude, std::mt19937& rng) {
  buffer.assign(count * DTypeSize(dtype), 0);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<double> values(count);
  for (size_t i = 0; i < count; ++i) {
    StoreFromFloat(buffer.data(), dtype, i, static_cast<float>(amplitude * dist(rng)));
    values[i] = LoadAsFloat(buffer.data(), dtype, i);
  }
  return values;
}

// Sets every element of a dtype buffer to NaN.
inline void Poison(std::vector<uint8_t>& buffer, DType dtype) {
  const size_t count = buffer.size() / DTypeSize(dtype);
  for (size_t i = 0; i < count; ++i) {
    StoreFromFloat(buffer.data(), dtype, i, std::numeric_limits<float>::quiet_NaN());
  }
}

// Relative tolerance of one rounding to dtype (half an ulp, relative).
inline double RoundingEps(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 0;
    case DType::kFloat16: return 1.0 / 2048;
    case DType::kBFloat16: return 1.0 / 256;
    case DType::kFloat8E4M3: return 1.0 / 16;
    case DType::kFloat8E5M2: return 1.0 / 8;
  }
  return 0;
}

// Checks every element of an output buffer (in dtype) against the reference: NaN never passes,
// |x - ref| <= atol + rtol * |ref| per element, and the relative L2 error is small.
// Returns the number of failing elements (reports the first few).
inline int64_t ExpectOutputsClose(const std::vector<uint8_t>& actual, DType dtype,
                                  const std::vector<double>& reference, const std::string& what) {
  const double rtol = RoundingEps(dtype) * 1.01 + 2e-5;
  const double atol = 2e-5;
  const double l2_tol = dtype == DType::kFloat32 ? 1e-5 : dtype == DType::kFloat16 ? 1e-3 : 8e-3;
  EXPECT_EQ(actual.size(), reference.size() * DTypeSize(dtype)) << what;
  int64_t failures = 0;
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < reference.size(); ++i) {
    const double x = LoadAsFloat(actual.data(), dtype, i);
    const double r = reference[i];
    const bool ok = !std::isnan(x) && std::fabs(x - r) <= atol + rtol * std::fabs(r);
    if (!ok && ++failures <= 5) {
      ADD_FAILURE() << what << ": element " << i << " is " << x << ", expected " << r;
    }
    if (!std::isnan(x)) err2 += (x - r) * (x - r);
    ref2 += r * r;
  }
  if (failures > 5) ADD_FAILURE() << what << ": " << failures << " elements differ in total";
  if (ref2 > 0) {
    EXPECT_LE(std::sqrt(err2 / ref2), l2_tol) << what << ": relative L2 error";
  }
  return failures;
}

// LSE: -inf must match exactly; finite values within 1e-4 + 1e-5 |ref|; NaN never passes.
inline int64_t ExpectLseClose(const std::vector<float>& actual,
                              const std::vector<double>& reference, const std::string& what) {
  EXPECT_EQ(actual.size(), reference.size()) << what;
  int64_t failures = 0;
  for (size_t i = 0; i < reference.size() && i < actual.size(); ++i) {
    const double x = actual[i], r = reference[i];
    bool ok;
    if (r == -kInfD) {
      ok = x == -kInfD;
    } else {
      ok = std::isfinite(x) && std::fabs(x - r) <= 1e-4 + 1e-5 * std::fabs(r);
    }
    if (!ok && ++failures <= 5) {
      ADD_FAILURE() << what << ": lse " << i << " is " << x << ", expected " << r;
    }
  }
  if (failures > 5) ADD_FAILURE() << what << ": " << failures << " lse values differ in total";
  return failures;
}

// A random batch in the paged layout, with its reference inputs.
struct PagedProblemSpec {
  std::vector<int> kv_lens;
  std::vector<int> qo_lens;  // ignored when decode
  bool decode = false;
  int page_size = 16;
  int num_kv_heads = 2;
  int group = 1;
  int head_dim = 64;
  DType kv_dtype = DType::kFloat16;
  DType q_dtype = DType::kFloat16;
  bool hnd = false;        // [page][2][head][token][dim] instead of NHD
  int extra_pages = 3;     // unused pages, filled with NaN
  double q_amplitude = 2;  // q values in [-a, a]; K, V in [-1, 1]
  uint32_t seed = 1;
};

struct PagedProblem {
  PagedProblemSpec spec;
  int num_qo_heads = 0;
  int64_t qo_nnz = 0;
  std::vector<int> qo_lens;   // 1 per request for decode
  std::vector<uint8_t> pool;  // [num_pages][2][page_size][num_kv_heads][head_dim] (or HND)
  int32_t num_pages = 0;
  std::vector<int32_t> indptr, indices, last_page_len, qo_indptr;
  std::vector<uint8_t> q, o;
  std::vector<float> lse;
  std::vector<DenseKv> dense;
  std::vector<double> q_values;

  PagedKV View() {
    PagedKV kv;
    kv.data = pool.data();
    kv.dtype = spec.kv_dtype;
    kv.num_pages = num_pages;
    kv.page_size = spec.page_size;
    kv.num_kv_heads = spec.num_kv_heads;
    kv.head_dim = spec.head_dim;
    kv.SetNhdStrides();
    if (spec.hnd) {
      kv.token_stride = spec.head_dim;
      kv.head_stride = static_cast<int64_t>(spec.page_size) * spec.head_dim;
    }
    kv.batch_size = static_cast<int32_t>(last_page_len.size());
    kv.indptr = indptr.data();
    kv.indices = indices.data();
    kv.last_page_len = last_page_len.data();
    return kv;
  }

  PagedAttentionParams Params(const AttentionOptions& options, bool with_lse) {
    PagedAttentionParams p;
    p.kv = View();
    p.qo.q = q.data();
    p.qo.o = o.data();
    p.qo.lse = with_lse ? lse.data() : nullptr;
    p.qo.q_dtype = spec.q_dtype;
    p.qo.num_qo_heads = num_qo_heads;
    p.qo.batch_size = p.kv.batch_size;
    p.qo.qo_indptr = spec.decode ? nullptr : qo_indptr.data();
    p.options = options;
    return p;
  }

  // Element offset of (page, K or V, token slot, head) in the pool.
  int64_t SlotOffset(int64_t page, int kv_index, int64_t slot, int head) const {
    const int64_t d = spec.head_dim, hk = spec.num_kv_heads, ps = spec.page_size;
    if (spec.hnd) return (((page * 2 + kv_index) * hk + head) * ps + slot) * d;
    return (((page * 2 + kv_index) * ps + slot) * hk + head) * d;
  }

  void PoisonOutputs() {
    Poison(o, spec.q_dtype);
    std::fill(lse.begin(), lse.end(), std::numeric_limits<float>::quiet_NaN());
  }
};

inline PagedProblem MakePagedProblem(const PagedProblemSpec& spec) {
  std::mt19937 rng(spec.seed);
  PagedProblem p;
  p.spec = spec;
  const int batch = static_cast<int>(spec.kv_lens.size());
  p.num_qo_heads = spec.num_kv_heads * spec.group;
  p.qo_lens = spec.decode ? std::vector<int>(batch, 1) : spec.qo_lens;
  const int64_t dim = spec.head_dim, hk = spec.num_kv_heads;

  // Pages: every request gets ceil(kv_len / page_size) distinct pages, in random order.
  int total = spec.extra_pages;
  for (int len : spec.kv_lens) total += (len + spec.page_size - 1) / spec.page_size;
  p.num_pages = total;
  std::vector<int32_t> page_ids(total);
  std::iota(page_ids.begin(), page_ids.end(), 0);
  std::shuffle(page_ids.begin(), page_ids.end(), rng);
  p.indptr.push_back(0);
  size_t next = 0;
  for (int b = 0; b < batch; ++b) {
    const int pages = (spec.kv_lens[b] + spec.page_size - 1) / spec.page_size;
    for (int i = 0; i < pages; ++i) p.indices.push_back(page_ids[next++]);
    p.indptr.push_back(static_cast<int32_t>(p.indices.size()));
    p.last_page_len.push_back(pages == 0 ? 1 : spec.kv_lens[b] - (pages - 1) * spec.page_size);
  }

  // The pool starts as NaN everywhere: slots no request owns must never be read.
  p.pool.assign(
      static_cast<size_t>(total) * 2 * spec.page_size * hk * dim * DTypeSize(spec.kv_dtype), 0);
  Poison(p.pool, spec.kv_dtype);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (int b = 0; b < batch; ++b) {
    DenseKv d;
    d.kv_len = spec.kv_lens[b];
    d.k.resize(d.kv_len * hk * dim);
    d.v.resize(d.kv_len * hk * dim);
    for (int64_t t = 0; t < d.kv_len; ++t) {
      const int64_t page = p.indices[p.indptr[b] + t / spec.page_size];
      for (int h = 0; h < hk; ++h) {
        for (int kv_index = 0; kv_index < 2; ++kv_index) {
          const int64_t base = p.SlotOffset(page, kv_index, t % spec.page_size, h);
          std::vector<double>& dst = kv_index == 0 ? d.k : d.v;
          for (int64_t e = 0; e < dim; ++e) {
            StoreFromFloat(p.pool.data(), spec.kv_dtype, base + e, dist(rng));
            dst[(t * hk + h) * dim + e] = LoadAsFloat(p.pool.data(), spec.kv_dtype, base + e);
          }
        }
      }
    }
    p.dense.push_back(std::move(d));
  }

  p.qo_indptr.push_back(0);
  for (int len : p.qo_lens) p.qo_indptr.push_back(p.qo_indptr.back() + len);
  p.qo_nnz = p.qo_indptr.back();
  p.q_values =
      FillRandom(p.q, spec.q_dtype, p.qo_nnz * p.num_qo_heads * dim, spec.q_amplitude, rng);
  p.o.assign(p.q.size(), 0);
  p.lse.assign(p.qo_nnz * p.num_qo_heads, 0.f);
  return p;
}

// Rows `rows` of p's output saw no key: o = 0 and lse = lse_of(h) for every query head h (-inf,
// or the head's sink).
template <typename LseOf>
void ExpectEmptyRows(const PagedProblem& p, std::initializer_list<int> rows, LseOf lse_of) {
  for (const int row : rows) {
    for (int h = 0; h < p.num_qo_heads; ++h) {
      EXPECT_EQ(p.lse[row * p.num_qo_heads + h], lse_of(h)) << "row " << row << " head " << h;
      for (int d = 0; d < p.spec.head_dim; ++d) {
        EXPECT_EQ(
            LoadAsFloat(p.o.data(), p.spec.q_dtype,
                        (static_cast<size_t>(row) * p.num_qo_heads + h) * p.spec.head_dim + d),
            0.f)
            << "row " << row << " head " << h;
      }
    }
  }
}

inline std::string DescribeSpec(const PagedProblemSpec& s, const AttentionOptions& o) {
  std::string lens;
  for (size_t b = 0; b < s.kv_lens.size() && b < 8; ++b) {
    absl::StrAppend(&lens, b ? "," : "", s.kv_lens[b]);
    if (!s.decode) absl::StrAppend(&lens, "/", s.qo_lens[b]);
  }
  if (s.kv_lens.size() > 8) absl::StrAppend(&lens, ",...");
  return absl::StrCat(s.decode ? "decode" : "prefill", " batch=", s.kv_lens.size(), " lens=[", lens,
                      "] page=", s.page_size, " kvh=", s.num_kv_heads, " group=", s.group,
                      " dim=", s.head_dim, " kv=", DTypeName(s.kv_dtype),
                      " q=", DTypeName(s.q_dtype), s.hnd ? " HND" : "", " causal=", o.causal,
                      " rope=", static_cast<int>(o.pos_encoding), " cap=", o.logits_soft_cap,
                      " window=", o.window_left, " seed=", s.seed);
}

}  // namespace attnd::kernels::testing
