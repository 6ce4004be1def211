// attnd example client: a miniature serving loop against a running daemon.
//
//   attnd_example_client --target=unix:///tmp/attnd.sock
//
// 1. connects and prints the server info;
// 2. creates a small paged KV pool (2 layers, 4 KV heads, head_dim 64, page size 16, fp16);
// 3. prefills 3 sequences of different lengths in one batch (K/V appended by the run itself,
//    causal attention, 16 query heads = GQA group 4);
// 4. decodes 8 steps for every sequence (client::DecodeBatch: one plan across steps, only the
//    page-table deltas sent): allocates a page when a sequence's last page is full,
//    and one run per layer (appending the new token's K/V);
// 5. checks every output row (o and lse) against its own float64 attention over the K/V it sent
//    (rounded to fp16 exactly as the daemon stores it), prints a summary and exits non-zero on any
//    mismatch (or any error).
//
// The reference below is deliberately independent of the daemon's code: plain loops in double.
#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "attnd/client/attnd_client.h"
#include "attnd/client/decode_batch.h"

ABSL_FLAG(std::string, target, "unix:///tmp/attnd.sock", "attnd gRPC target");
ABSL_FLAG(int, connect_timeout_s, 10, "seconds to wait for the daemon to accept connections");
ABSL_FLAG(int, decode_steps, 8, "decode steps per sequence");
ABSL_FLAG(uint32_t, seed, 1234, "random seed of the generated q/k/v");
ABSL_FLAG(double, tolerance, 5e-3, "largest accepted |daemon - reference| for o and lse");

namespace {

namespace ac = attnd::client;
namespace v1 = attnd::v1;

// The model: small enough for the CPU backend to be quick.
constexpr int kLayers = 2;
constexpr int kKvHeads = 4;
constexpr int kQoHeads = 16;
constexpr int kHeadDim = 64;
constexpr int kPageSize = 16;
constexpr int64_t kPoolPages = 64;
constexpr v1::DType kDType = v1::DTYPE_FLOAT16;  // K/V storage and q/o

// One sequence as the client knows it: its pages and every K/V row it sent, per layer,
// already rounded to fp16 ([len][kKvHeads][kHeadDim] flattened).
struct Sequence {
  std::vector<int32_t> pages;
  int len = 0;
  std::vector<float> k[kLayers];
  std::vector<float> v[kLayers];
};

// Reference attention for one query row over keys [0, visible) of a sequence, in double.
// q_row: [kQoHeads][kHeadDim]. Writes o_row [kQoHeads][kHeadDim] and lse [kQoHeads].
void ReferenceRow(const float* q_row, const std::vector<float>& k, const std::vector<float>& v,
                  int visible, double* o_row, double* lse) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(kHeadDim));
  const int group = kQoHeads / kKvHeads;
  std::vector<double> logits(visible);
  for (int h = 0; h < kQoHeads; ++h) {
    const int kv_head = h / group;
    double max_logit = -INFINITY;
    for (int j = 0; j < visible; ++j) {
      const float* key = &k[(static_cast<size_t>(j) * kKvHeads + kv_head) * kHeadDim];
      double dot = 0;
      for (int d = 0; d < kHeadDim; ++d)
        dot += static_cast<double>(q_row[h * kHeadDim + d]) * key[d];
      logits[j] = dot * scale;
      max_logit = std::max(max_logit, logits[j]);
    }
    double sum = 0;
    for (int j = 0; j < visible; ++j) sum += std::exp(logits[j] - max_logit);
    for (int d = 0; d < kHeadDim; ++d) o_row[h * kHeadDim + d] = 0;
    for (int j = 0; j < visible; ++j) {
      const double p = std::exp(logits[j] - max_logit) / sum;
      const float* value = &v[(static_cast<size_t>(j) * kKvHeads + kv_head) * kHeadDim];
      for (int d = 0; d < kHeadDim; ++d) o_row[h * kHeadDim + d] += p * value[d];
    }
    lse[h] = max_logit + std::log(sum);
  }
}

// Random values in [-1, 1], rounded to the wire dtype so the reference sees what the daemon sees.
std::vector<float> RandomRows(std::mt19937& rng, size_t count) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> values(count);
  for (float& x : values) x = dist(rng);
  ac::RoundToDType(kDType, values);
  return values;
}

// Largest errors of one step, over every layer and row.
struct StepError {
  double o = 0;
  double lse = 0;
  void Add(const StepError& other) {
    o = std::max(o, other.o);
    lse = std::max(lse, other.lse);
  }
};

// Compares the daemon's output rows [rows][kQoHeads][kHeadDim] (and lse) with the reference.
// row_seq[r], row_visible[r]: which sequence a row belongs to and how many keys it sees.
absl::StatusOr<StepError> Check(const std::vector<Sequence>& seqs, int layer,
                                const std::vector<float>& q, const ac::RunOutput& out,
                                const std::vector<int>& row_seq,
                                const std::vector<int>& row_visible) {
  const size_t rows = row_seq.size();
  const size_t row_elems = static_cast<size_t>(kQoHeads) * kHeadDim;
  if (out.o.size() != rows * row_elems || out.lse.size() != rows * kQoHeads) {
    return absl::InternalError(absl::StrCat("daemon returned o of ", out.o.size(), " and lse of ",
                                            out.lse.size(), " elements; expected ",
                                            rows * row_elems, " and ", rows * kQoHeads));
  }
  StepError err;
  std::vector<double> o_ref(row_elems), lse_ref(kQoHeads);
  for (size_t r = 0; r < rows; ++r) {
    const Sequence& s = seqs[row_seq[r]];
    ReferenceRow(&q[r * row_elems], s.k[layer], s.v[layer], row_visible[r], o_ref.data(),
                 lse_ref.data());
    for (size_t i = 0; i < row_elems; ++i) {
      const double e = std::abs(out.o[r * row_elems + i] - o_ref[i]);
      err.o = std::isnan(e) ? INFINITY : std::max(err.o, e);
    }
    for (int h = 0; h < kQoHeads; ++h) {
      const double e = std::abs(out.lse[r * kQoHeads + h] - lse_ref[h]);
      err.lse = std::isnan(e) ? INFINITY : std::max(err.lse, e);
    }
  }
  return err;
}

// Appends rows [rows][kKvHeads][kHeadDim] of a batch to each sequence's host copy.
void Remember(std::vector<Sequence>& seqs, int layer, const std::vector<float>& k,
              const std::vector<float>& v, const std::vector<int>& row_seq) {
  const size_t row_elems = static_cast<size_t>(kKvHeads) * kHeadDim;
  for (size_t r = 0; r < row_seq.size(); ++r) {
    Sequence& s = seqs[row_seq[r]];
    s.k[layer].insert(s.k[layer].end(), k.begin() + r * row_elems, k.begin() + (r + 1) * row_elems);
    s.v[layer].insert(s.v[layer].end(), v.begin() + r * row_elems, v.begin() + (r + 1) * row_elems);
  }
}

// The CSR page table of every sequence at its current length.
ac::PlanSpec MakePlan(const std::string& pool_id, v1::AttentionKind kind,
                      const std::vector<Sequence>& seqs, const std::vector<int>& qo_lens) {
  ac::PlanSpec plan;
  plan.pool_id = pool_id;
  plan.kind = kind;
  plan.num_qo_heads = kQoHeads;
  plan.kv_indptr.push_back(0);
  plan.qo_indptr.push_back(0);
  for (size_t b = 0; b < seqs.size(); ++b) {
    const Sequence& s = seqs[b];
    const int pages_used = (s.len + kPageSize - 1) / kPageSize;
    plan.kv_indices.insert(plan.kv_indices.end(), s.pages.begin(), s.pages.begin() + pages_used);
    plan.kv_indptr.push_back(static_cast<int32_t>(plan.kv_indices.size()));
    plan.kv_last_page_len.push_back(s.len - (pages_used - 1) * kPageSize);
    plan.qo_indptr.push_back(plan.qo_indptr.back() + qo_lens[b]);
  }
  return plan;
}

// Runs every layer of one step: random q/k/v for `row_seq.size()` new tokens, one Run per layer
// (appending k/v), remembering k/v and checking o/lse.
absl::StatusOr<StepError> RunLayers(ac::Session& session, const std::string& plan_id,
                                    std::vector<Sequence>& seqs, const std::vector<int>& row_seq,
                                    const std::vector<int>& row_visible, bool causal,
                                    std::mt19937& rng) {
  const int64_t rows = static_cast<int64_t>(row_seq.size());
  StepError step;
  for (int layer = 0; layer < kLayers; ++layer) {
    std::vector<float> q = RandomRows(rng, rows * kQoHeads * kHeadDim);
    std::vector<float> k = RandomRows(rng, rows * kKvHeads * kHeadDim);
    std::vector<float> v = RandomRows(rng, rows * kKvHeads * kHeadDim);
    ac::RunArgs args;
    args.plan_id = plan_id;
    args.layer = layer;
    auto q_tensor = ac::MakeTensor(q, {rows, kQoHeads, kHeadDim}, kDType);
    auto k_tensor = ac::MakeTensor(k, {rows, kKvHeads, kHeadDim}, kDType);
    auto v_tensor = ac::MakeTensor(v, {rows, kKvHeads, kHeadDim}, kDType);
    if (!q_tensor.ok()) return q_tensor.status();
    if (!k_tensor.ok()) return k_tensor.status();
    if (!v_tensor.ok()) return v_tensor.status();
    args.q = *std::move(q_tensor);
    args.k = *std::move(k_tensor);
    args.v = *std::move(v_tensor);
    args.options.set_causal(causal);
    args.options.set_return_lse(true);
    absl::StatusOr<ac::RunOutput> out = session.RunAndDecode(std::move(args));
    if (!out.ok()) {
      return absl::Status(out.status().code(),
                          absl::StrCat("Run(layer ", layer, "): ", out.status().message()));
    }
    Remember(seqs, layer, k, v, row_seq);
    absl::StatusOr<StepError> err = Check(seqs, layer, q, *out, row_seq, row_visible);
    if (!err.ok()) return err.status();
    step.Add(*err);
  }
  return step;
}

int Fail(const absl::Status& status, const char* what) {
  std::fprintf(stderr, "attnd_example_client: %s failed: %s\n", what, status.ToString().c_str());
  std::printf("RESULT: FAIL\n");
  return 1;
}

std::string JoinLens(const std::vector<Sequence>& seqs) {
  std::vector<int> lens;
  for (const Sequence& s : seqs) lens.push_back(s.len);
  return absl::StrJoin(lens, ",");
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const double tolerance = absl::GetFlag(FLAGS_tolerance);
  std::mt19937 rng(absl::GetFlag(FLAGS_seed));

  ac::ClientOptions options;
  options.target = absl::GetFlag(FLAGS_target);
  options.client_name = "attnd-example-client";
  auto client = ac::Client::Create(options);
  if (!client.ok()) return Fail(client.status(), "Client::Create");
  if (auto s = (*client)->WaitForConnected(absl::Seconds(absl::GetFlag(FLAGS_connect_timeout_s)));
      !s.ok()) {
    return Fail(s, "connect");
  }

  auto info = (*client)->GetServerInfo();
  if (!info.ok()) return Fail(info.status(), "GetServerInfo");
  std::printf("attnd %s  backend=%s  device=%s  max_message_bytes=%llu\n", info->version().c_str(),
              info->backend().c_str(), info->device().c_str(),
              static_cast<unsigned long long>(info->max_message_bytes()));

  auto session = (*client)->OpenSession();
  if (!session.ok()) return Fail(session.status(), "OpenSession");
  ac::Session& s = **session;
  std::printf("session %s\n", s.session_id().c_str());

  ac::PoolSpec spec;
  spec.name = absl::StrCat("example-", getpid());
  spec.num_layers = kLayers;
  spec.num_kv_heads = kKvHeads;
  spec.head_dim = kHeadDim;
  spec.page_size = kPageSize;
  spec.kv_dtype = kDType;
  spec.num_pages = kPoolPages;
  auto pool = s.CreatePool(spec);
  if (!pool.ok()) return Fail(pool.status(), "CreatePool");
  const std::string pool_id = pool->pool_id();
  std::printf(
      "pool %s \"%s\": %d layers, %d kv heads, head_dim %d, page_size %d, %s, %lld pages "
      "(%llu bytes)\n",
      pool_id.c_str(), pool->name().c_str(), pool->num_layers(), pool->num_kv_heads(),
      pool->head_dim(), pool->page_size(), ac::DTypeName(pool->kv_dtype()),
      static_cast<long long>(pool->num_pages()),
      static_cast<unsigned long long>(pool->total_bytes()));

  bool pass = true;
  StepError total;
  auto report = [&](const std::string& label, const StepError& err) {
    const bool ok = err.o <= tolerance && err.lse <= tolerance;
    pass = pass && ok;
    total.Add(err);
    std::printf("%-34s max|o-ref|=%.2e  max|lse-ref|=%.2e  %s\n", label.c_str(), err.o, err.lse,
                ok ? "ok" : "MISMATCH");
  };

  // ---- Prefill: 3 sequences, one batch, K/V appended by the run, causal -----------------------
  const std::vector<int> prefill_lens = {37, 5, 16};
  std::vector<Sequence> seqs(prefill_lens.size());
  std::vector<int> row_seq, row_visible;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const int pages = (prefill_lens[b] + kPageSize - 1) / kPageSize;
    auto grant = s.AllocatePages(pool_id, pages);
    if (!grant.ok()) return Fail(grant.status(), "AllocatePages");
    seqs[b].pages = grant->page_ids;
    seqs[b].len = prefill_lens[b];
    for (int i = 0; i < prefill_lens[b]; ++i) {
      row_seq.push_back(static_cast<int>(b));
      row_visible.push_back(i + 1);  // causal: row i sees positions 0..i
    }
  }
  auto plan = s.CreatePlan(MakePlan(pool_id, v1::ATTENTION_KIND_PREFILL, seqs, prefill_lens));
  if (!plan.ok()) return Fail(plan.status(), "CreatePlan(prefill)");
  auto prefill_err = RunLayers(s, plan->plan_id, seqs, row_seq, row_visible, true, rng);
  if (!prefill_err.ok()) return Fail(prefill_err.status(), "prefill");
  if (auto st = s.DeletePlan(plan->plan_id); !st.ok()) return Fail(st, "DeletePlan");
  report(absl::StrCat("prefill lens=", JoinLens(seqs), " (", row_seq.size(), " rows)"),
         *prefill_err);

  // ---- Decode: one new token per sequence per step --------------------------------------------
  // The batch is one plan across steps (client::DecodeBatch): each step sends only the page-table
  // changes (UpdatePlan deltas) and takes a fresh page for a sequence whose last page is full.
  const int steps = absl::GetFlag(FLAGS_decode_steps);
  {
    ac::PlanSpec fixed;
    fixed.num_qo_heads = kQoHeads;
    ac::DecodeBatch batch(s, pool_id, kPageSize, fixed);
    std::vector<int64_t> handles;
    for (const Sequence& seq : seqs) {
      const int pages_used = (seq.len + kPageSize - 1) / kPageSize;
      auto handle =
          batch.Join(std::vector<int32_t>(seq.pages.begin(), seq.pages.begin() + pages_used),
                     seq.len, /*owns_pages=*/false);
      if (!handle.ok()) return Fail(handle.status(), "DecodeBatch::Join");
      handles.push_back(*handle);
    }
    for (int step = 0; step < steps; ++step) {
      if (auto st = batch.Step(); !st.ok()) return Fail(st, "DecodeBatch::Step");
      for (size_t b = 0; b < seqs.size(); ++b) {
        seqs[b].len = *batch.kv_len(handles[b]);
        const std::vector<int32_t> pages = *batch.pages(handles[b]);
        for (int32_t page : pages) {  // the pages the step took, to free below
          if (std::find(seqs[b].pages.begin(), seqs[b].pages.end(), page) == seqs[b].pages.end()) {
            seqs[b].pages.push_back(page);
          }
        }
      }
      std::vector<int> decode_seq, decode_visible;
      for (size_t b = 0; b < seqs.size(); ++b) {
        decode_seq.push_back(static_cast<int>(b));
        decode_visible.push_back(seqs[b].len);  // decode sees the whole sequence
      }
      auto err = RunLayers(s, batch.plan_id(), seqs, decode_seq, decode_visible, false, rng);
      if (!err.ok()) return Fail(err.status(), "decode");
      auto described = s.DescribePool(pool_id);
      if (!described.ok()) return Fail(described.status(), "DescribePool");
      report(absl::StrCat("decode step ", step + 1, " lens=", JoinLens(seqs),
                          " pages used=", described->num_pages() - described->free_pages()),
             *err);
    }
  }  // the batch's plan is deleted here

  // ---- Clean up ---------------------------------------------------------------------------------
  size_t pages_held = 0;
  for (const Sequence& seq : seqs) {
    pages_held += seq.pages.size();
    auto freed = s.FreePages(pool_id, seq.pages);
    if (!freed.ok()) return Fail(freed.status(), "FreePages");
  }
  auto final_pool = s.DescribePool(pool_id);
  if (!final_pool.ok()) return Fail(final_pool.status(), "DescribePool");
  std::printf("pages: %zu used by 3 sequences, all freed; pool free %lld of %lld\n", pages_held,
              static_cast<long long>(final_pool->free_pages()),
              static_cast<long long>(final_pool->num_pages()));
  if (final_pool->free_pages() != final_pool->num_pages()) {
    std::printf("pool did not get every page back\n");
    pass = false;
  }
  if (auto st = s.DeletePool(pool_id); !st.ok()) return Fail(st, "DeletePool");
  if (auto st = s.Close(); !st.ok()) return Fail(st, "Session close");

  std::printf("overall max|o-ref|=%.2e max|lse-ref|=%.2e (tolerance %.1e)\n", total.o, total.lse,
              tolerance);
  std::printf("RESULT: %s\n", pass ? "PASS" : "FAIL");
  return pass ? 0 : 1;
}
