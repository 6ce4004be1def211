#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "httplib.h"
#include "reference_attention.h"

namespace attnd::testing {

::testing::AssertionResult StatusIs(const absl::Status& status, absl::StatusCode code,
                                    const std::vector<std::string>& substrings) {
  if (status.code() != code) {
    return ::testing::AssertionFailure()
           << "expected " << absl::StatusCodeToString(code) << ", got " << status;
  }
  for (const std::string& s : substrings) {
    if (status.message().find(s) == std::string_view::npos) {
      return ::testing::AssertionFailure()
             << "status " << status << " does not mention \"" << s << "\"";
    }
  }
  return ::testing::AssertionSuccess() << status;
}

client::PoolSpec MakePoolSpec(const ModelShape& shape, const std::string& name) {
  client::PoolSpec spec;
  spec.name = name;
  spec.num_layers = shape.layers;
  spec.num_kv_heads = shape.kv_heads;
  spec.head_dim = shape.head_dim;
  spec.page_size = shape.page_size;
  spec.kv_dtype = shape.kv_dtype;
  spec.num_pages = shape.num_pages;
  return spec;
}

absl::StatusOr<DecodePlan> CreateDecodePlan(client::SessionApi& session, const ModelShape& shape,
                                            const std::string& name, int num_pages) {
  auto pool = session.CreatePool(MakePoolSpec(shape, name));
  if (!pool.ok()) return pool.status();
  auto grant = session.AllocatePages(pool->pool_id(), num_pages);
  if (!grant.ok()) return grant.status();
  client::PlanSpec spec;
  spec.pool_id = pool->pool_id();
  spec.num_qo_heads = shape.qo_heads;
  spec.kv_indptr = {0, num_pages};
  spec.kv_indices = grant->page_ids;
  spec.kv_last_page_len = {3};
  auto plan = session.CreatePlan(spec);
  if (!plan.ok()) return plan.status();
  return DecodePlan{pool->pool_id(), grant->page_ids, std::move(spec), plan->plan_id};
}

std::vector<float> RandomValues(std::mt19937& rng, size_t count, v1::DType dtype) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> values(count);
  for (float& x : values) x = dist(rng);
  client::RoundToDType(dtype, values);
  return values;
}

Workload::Workload(client::SessionApi* session, ModelShape shape, std::string pool_id,
                   uint32_t seed, double tolerance)
    : session_(session),
      shape_(shape),
      pool_id_(std::move(pool_id)),
      rng_(seed),
      tolerance_(tolerance) {}

std::vector<int32_t> Workload::AllPages() const {
  std::vector<int32_t> pages;
  for (const Sequence& s : seqs_) pages.insert(pages.end(), s.pages.begin(), s.pages.end());
  return pages;
}

client::PlanSpec Workload::PlanFor(v1::AttentionKind kind, const std::vector<int>& seq_ids,
                                   const std::vector<int>& qo_lens) const {
  client::PlanSpec plan;
  plan.pool_id = pool_id_;
  plan.kind = kind;
  plan.num_qo_heads = shape_.qo_heads;
  plan.kv_indptr.push_back(0);
  plan.qo_indptr.push_back(0);
  for (size_t i = 0; i < seq_ids.size(); ++i) {
    const Sequence& s = seqs_[seq_ids[i]];
    const int used = (s.len + shape_.page_size - 1) / shape_.page_size;
    plan.kv_indices.insert(plan.kv_indices.end(), s.pages.begin(), s.pages.begin() + used);
    plan.kv_indptr.push_back(static_cast<int32_t>(plan.kv_indices.size()));
    plan.kv_last_page_len.push_back(s.len - (used - 1) * shape_.page_size);
    plan.qo_indptr.push_back(plan.qo_indptr.back() + qo_lens[i]);
  }
  return plan;
}

absl::Status Workload::Prefill(const std::vector<int>& lens) {
  std::vector<int> ids, row_seq, row_last;
  for (int len : lens) {
    Sequence s;
    const int pages = (len + shape_.page_size - 1) / shape_.page_size;
    absl::StatusOr<client::PageGrant> grant = session_->AllocatePages(pool_id_, pages);
    if (!grant.ok()) return grant.status();
    if (static_cast<int>(grant->page_ids.size()) != pages) {
      return absl::InternalError(absl::StrCat("AllocatePages(", pages, ") returned ",
                                              grant->page_ids.size(), " pages"));
    }
    s.pages = grant->page_ids;
    s.len = len;
    s.k.resize(shape_.layers);
    s.v.resize(shape_.layers);
    const int id = static_cast<int>(seqs_.size());
    seqs_.push_back(std::move(s));
    ids.push_back(id);
    for (int i = 0; i < len; ++i) {
      row_seq.push_back(id);
      row_last.push_back(i);  // causal, qo_len == kv_len: row i sees 0..i
    }
  }
  absl::StatusOr<client::PlanInfo> plan =
      session_->CreatePlan(PlanFor(v1::ATTENTION_KIND_PREFILL, ids, lens));
  if (!plan.ok()) return plan.status();
  absl::Status status = RunLayers(plan->plan_id, row_seq, row_last, /*causal=*/true);
  absl::Status deleted = session_->DeletePlan(plan->plan_id);
  return status.ok() ? deleted : status;
}

absl::Status Workload::DecodeStep() {
  std::vector<int> ids, row_seq, row_last;
  for (size_t b = 0; b < seqs_.size(); ++b) {
    Sequence& s = seqs_[b];
    if (s.len % shape_.page_size == 0) {
      absl::StatusOr<client::PageGrant> grant = session_->AllocatePages(pool_id_, 1);
      if (!grant.ok()) return grant.status();
      s.pages.push_back(grant->page_ids.at(0));
    }
    ++s.len;
    ids.push_back(static_cast<int>(b));
    row_seq.push_back(static_cast<int>(b));
    row_last.push_back(s.len - 1);
  }
  client::PlanSpec spec = PlanFor(v1::ATTENTION_KIND_DECODE, ids, std::vector<int>(ids.size(), 1));
  spec.qo_indptr.clear();
  absl::StatusOr<client::PlanInfo> plan = session_->CreatePlan(spec);
  if (!plan.ok()) return plan.status();
  absl::Status status = RunLayers(plan->plan_id, row_seq, row_last, /*causal=*/false);
  absl::Status deleted = session_->DeletePlan(plan->plan_id);
  return status.ok() ? deleted : status;
}

absl::Status Workload::FreeAll() {
  for (Sequence& s : seqs_) {
    if (s.pages.empty()) continue;
    absl::StatusOr<int64_t> freed = session_->FreePages(pool_id_, s.pages);
    if (!freed.ok()) return freed.status();
    s.pages.clear();
  }
  seqs_.clear();
  return absl::OkStatus();
}

absl::Status Workload::RunLayers(const std::string& plan_id, const std::vector<int>& row_seq,
                                 const std::vector<int>& row_last, bool causal) {
  const int64_t rows = static_cast<int64_t>(row_seq.size());
  const ReferenceShape ref{shape_.qo_heads, shape_.kv_heads, shape_.head_dim};
  const size_t q_row = static_cast<size_t>(shape_.qo_heads) * shape_.head_dim;
  const size_t kv_row = static_cast<size_t>(shape_.kv_heads) * shape_.head_dim;
  for (int layer = 0; layer < shape_.layers; ++layer) {
    std::vector<float> q = RandomValues(rng_, rows * q_row, shape_.q_dtype);
    std::vector<float> k = RandomValues(rng_, rows * kv_row, shape_.kv_dtype);
    std::vector<float> v = RandomValues(rng_, rows * kv_row, shape_.kv_dtype);
    client::RunArgs args;
    args.plan_id = plan_id;
    args.layer = layer;
    auto qt = client::MakeTensor(q, {rows, shape_.qo_heads, shape_.head_dim}, shape_.q_dtype);
    auto kt = client::MakeTensor(k, {rows, shape_.kv_heads, shape_.head_dim}, shape_.kv_dtype);
    auto vt = client::MakeTensor(v, {rows, shape_.kv_heads, shape_.head_dim}, shape_.kv_dtype);
    if (!qt.ok() || !kt.ok() || !vt.ok()) return absl::InternalError("MakeTensor failed");
    args.q = *std::move(qt);
    args.k = *std::move(kt);
    args.v = *std::move(vt);
    args.options.set_causal(causal);
    args.options.set_return_lse(true);
    absl::StatusOr<client::RunOutput> out = session_->RunAndDecode(std::move(args));
    if (!out.ok()) return out.status();
    if (out->o.size() != static_cast<size_t>(rows) * q_row ||
        out->lse.size() != static_cast<size_t>(rows) * shape_.qo_heads) {
      return absl::InternalError(absl::StrCat("Run returned o of ", out->o.size(), " and lse of ",
                                              out->lse.size(), " elements for ", rows, " rows"));
    }
    for (int64_t r = 0; r < rows; ++r) {
      Sequence& s = seqs_[row_seq[r]];
      s.k[layer].insert(s.k[layer].end(), k.begin() + r * kv_row, k.begin() + (r + 1) * kv_row);
      s.v[layer].insert(s.v[layer].end(), v.begin() + r * kv_row, v.begin() + (r + 1) * kv_row);
    }
    std::vector<double> o_ref(q_row), lse_ref(shape_.qo_heads);
    for (int64_t r = 0; r < rows; ++r) {
      const Sequence& s = seqs_[row_seq[r]];
      ReferenceAttentionRow(ref, &q[r * q_row], s.k[layer], s.v[layer], 0, row_last[r], 0.0,
                            o_ref.data(), lse_ref.data());
      double o_err = 0, lse_err = 0;
      for (size_t i = 0; i < q_row; ++i) {
        const double e = std::abs(out->o[r * q_row + i] - o_ref[i]);
        o_err = std::isfinite(e) ? std::max(o_err, e) : INFINITY;
      }
      for (int h = 0; h < shape_.qo_heads; ++h) {
        const double e = std::abs(out->lse[r * shape_.qo_heads + h] - lse_ref[h]);
        lse_err = std::isfinite(e) ? std::max(lse_err, e) : INFINITY;
      }
      max_o_error_ = std::max(max_o_error_, o_err);
      max_lse_error_ = std::max(max_lse_error_, lse_err);
      if (o_err > tolerance_ || lse_err > tolerance_) {
        return absl::InternalError(absl::StrCat(
            "output mismatch at layer ", layer, " row ", r, " (sequence ", row_seq[r],
            ", position ", row_last[r], "): max|o-ref|=", o_err, " max|lse-ref|=", lse_err,
            " tolerance ", tolerance_));
      }
    }
  }
  return absl::OkStatus();
}

std::vector<MetricSample> ParsePrometheusText(const std::string& text) {
  std::vector<MetricSample> samples;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    MetricSample sample;
    size_t pos = line.find_first_of("{ ");
    if (pos == std::string::npos) continue;
    sample.name = line.substr(0, pos);
    if (line[pos] == '{') {
      size_t i = pos + 1;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find('=', i);
        if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"') break;
        std::string key = line.substr(i, eq - i);
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value += line[j] == 'n' ? '\n' : line[j];
          } else {
            value += line[j];
          }
        }
        sample.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      pos = line.find('}', i);
      if (pos == std::string::npos) continue;
      ++pos;
    }
    std::istringstream value_in(line.substr(pos));
    std::string value_text;
    value_in >> value_text;
    if (value_text == "+Inf") {
      sample.value = INFINITY;
    } else if (value_text == "-Inf") {
      sample.value = -INFINITY;
    } else {
      try {
        sample.value = std::stod(value_text);
      } catch (...) {
        continue;
      }
    }
    samples.push_back(std::move(sample));
  }
  return samples;
}

double SumMetric(const std::vector<MetricSample>& samples, const std::string& name,
                 const std::map<std::string, std::string>& match) {
  double sum = 0;
  for (const MetricSample& s : samples) {
    if (s.name != name) continue;
    bool ok = true;
    for (const auto& [key, value] : match) {
      auto it = s.labels.find(key);
      if (it == s.labels.end() || it->second != value) ok = false;
    }
    if (ok) sum += s.value;
  }
  return sum;
}

absl::StatusOr<std::pair<int, std::string>> HttpGet(int port, const std::string& path) {
  httplib::Client http("127.0.0.1", port);
  http.set_connection_timeout(5);
  http.set_read_timeout(10);
  httplib::Result result = http.Get(path);
  if (!result) {
    return absl::UnavailableError(
        absl::StrCat("GET ", path, " on port ", port, ": ", httplib::to_string(result.error())));
  }
  return std::make_pair(result->status, result->body);
}

}  // namespace attnd::testing
