// PagedAttention and RaggedAttention of the CPU reference (semantics in cpu_reference.h).
//
// Work is split into tasks of (request b, kv head, tile of up to kTileRows query rows). A task
// handles the `group` query heads that share the kv head, so every K/V block it converts (and
// rotates) serves tile_rows * group query rows. Keys are visited in blocks aligned to multiples
// of kKeyBlock positions, in ascending order, and masked keys contribute exactly nothing, so each
// row's floating-point reduction is the same whatever the tiling or the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <new>
#include <optional>
#include <vector>

#include "attention_state.h"
#include "attnd/kernels/cpu_reference.h"
#include "attnd/kernels/custom_mask.h"
#include "parallel_for.h"
#include "rope.h"
#include "row_convert.h"
#include "validation.h"

namespace attnd::kernels::cpu {
namespace {

constexpr int kTileRows = 16;  // query rows per task
constexpr int kKeyBlock = 64;  // keys converted and reduced together
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// K/V of the paged cache: element offsets of (request b, kv position t, kv head h).
struct PagedKeys {
  explicit PagedKeys(const PagedKV& view)
      : kv(view),
        k_base(view.data),
        v_base(static_cast<const char*>(view.data) + view.kv_stride * DTypeSize(view.dtype)) {}
  int32_t batch_size() const { return kv.batch_size; }
  int64_t KvLen(int32_t b) const { return PagedKvLen(kv, b); }
  int64_t Offset(int32_t b, int64_t t, int32_t h) const {
    const int64_t page = kv.indices[kv.indptr[b] + t / kv.page_size];
    return page * kv.page_stride + (t % kv.page_size) * kv.token_stride + h * kv.head_stride;
  }
  float KScale(int32_t h) const { return kv.k_scale != nullptr ? kv.k_scale[h] : 1.f; }
  float VScale(int32_t h) const { return kv.v_scale != nullptr ? kv.v_scale[h] : 1.f; }
  const PagedKV& kv;
  const void* k_base;
  const void* v_base;  // V is K shifted by kv_stride elements
};

// K/V of ragged contiguous tensors.
struct RaggedKeys {
  explicit RaggedKeys(const RaggedKV& view) : kv(view), k_base(view.k), v_base(view.v) {}
  int32_t batch_size() const { return kv.batch_size; }
  int64_t KvLen(int32_t b) const { return kv.indptr[b + 1] - kv.indptr[b]; }
  int64_t Offset(int32_t b, int64_t t, int32_t h) const {
    return (kv.indptr[b] + t) * kv.stride_n + h * kv.stride_h;
  }
  static float KScale(int32_t) { return 1.f; }  // ragged K/V: tensors, no scales
  static float VScale(int32_t) { return 1.f; }
  const RaggedKV& kv;
  const void* k_base;
  const void* v_base;
};

// Dot product with 8 independent partial sums (lets the compiler vectorize without
// reassociating; the order is fixed, so results are reproducible).
inline float Dot(const float* a, const float* b, int n) {
  float partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) partial[k] += a[i + k] * b[i + k];
  }
  for (; i < n; ++i) partial[i % 8] += a[i] * b[i];
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) +
         ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

struct Task {
  int32_t request;
  int32_t kv_head;
  int32_t row_begin;  // query rows [row_begin, row_end) of the request
  int32_t row_end;
};

// Everything a task needs that is the same for the whole call.
template <typename Keys>
struct CallContext {
  const QueryOutput& qo;
  const Keys& keys;
  const AttentionOptions& options;
  DType kv_dtype;
  int32_t num_kv_heads;
  int32_t head_dim;
  int32_t group;  // query heads per kv head
  float sm_scale;
  std::optional<RopeLlama> rope;

  int64_t QoBegin(int32_t b) const { return qo.qo_indptr ? qo.qo_indptr[b] : b; }
  int64_t QoLen(int32_t b) const {
    return qo.qo_indptr ? qo.qo_indptr[b + 1] - qo.qo_indptr[b] : 1;
  }
  int64_t RopeOffset(int32_t b) const { return options.rope_offsets ? options.rope_offsets[b] : 0; }
};

// Per-thread buffers, sized once per worker.
template <typename Keys>
class TaskRunner {
 public:
  explicit TaskRunner(const CallContext<Keys>& ctx)
      : ctx_(ctx),
        dim_(ctx.head_dim),
        k_block_(static_cast<size_t>(kKeyBlock) * dim_),
        v_block_(static_cast<size_t>(kKeyBlock) * dim_),
        q_(static_cast<size_t>(kTileRows) * ctx.group * dim_),
        logits_(kKeyBlock),
        out_(dim_),
        states_(static_cast<size_t>(kTileRows) * ctx.group, AttentionState(dim_)) {}

  void Run(const Task& task) {
    const int32_t b = task.request;
    const int32_t group = ctx_.group;
    const int32_t num_qo_heads = ctx_.qo.num_qo_heads;
    const int64_t kv_len = ctx_.keys.KvLen(b);
    const int64_t first_position = kv_len - ctx_.QoLen(b);  // position of row 0
    const int64_t qo_begin = ctx_.QoBegin(b);
    const int64_t rope_offset = ctx_.RopeOffset(b);
    const int32_t rows = task.row_end - task.row_begin;
    k_scale_ = ctx_.keys.KScale(task.kv_head);
    v_scale_ = ctx_.keys.VScale(task.kv_head);
    const int32_t window = ctx_.options.window_left;
    const bool causal = ctx_.options.causal;
    // Custom mask (custom_mask.h): row r of the tile is mask row task.row_begin + r; keys below
    // dense_until are visible to every row.
    const CustomMaskView& mask = ctx_.options.custom_mask;
    const uint32_t* mask_rows = mask.words != nullptr ? mask.words + mask.word_offset[b] : nullptr;
    const int64_t mask_row_words = MaskRowWords(kv_len);
    const int64_t dense_until = mask_rows != nullptr ? mask.dense_until[b] : kv_len;

    // Load (and rotate) the tile's query rows: q_[(r * group + g) * dim].
    for (int32_t r = 0; r < rows; ++r) {
      const int64_t row = qo_begin + task.row_begin + r;
      const int64_t position = first_position + task.row_begin + r;
      for (int32_t g = 0; g < group; ++g) {
        const int32_t h = task.kv_head * group + g;
        float* q = &q_[(static_cast<size_t>(r) * group + g) * dim_];
        LoadRow(ctx_.qo.q, ctx_.qo.q_dtype, (row * num_qo_heads + h) * dim_, dim_, q);
        if (ctx_.rope) ctx_.rope->Rotate(q, position + rope_offset);
        states_[static_cast<size_t>(r) * group + g].Reset();
      }
    }

    // Keys visible to any row of the tile: [lo, hi).
    const int64_t tile_first = first_position + task.row_begin;
    const int64_t tile_last = first_position + task.row_end - 1;
    const int64_t lo = window >= 0 ? std::max<int64_t>(0, tile_first - window) : 0;
    const int64_t hi = causal ? std::min<int64_t>(kv_len, tile_last + 1) : kv_len;

    for (int64_t block = lo / kKeyBlock * kKeyBlock; block < hi; block += kKeyBlock) {
      const int64_t begin = std::max(block, lo), end = std::min(block + kKeyBlock, hi);
      const int n = static_cast<int>(end - begin);
      LoadKeyBlock(b, task.kv_head, begin, n, rope_offset);
      for (int32_t r = 0; r < rows; ++r) {
        const int64_t position = tile_first + r;
        // Visible keys of this row: [row_lo, row_hi].
        const int64_t row_lo = window >= 0 ? position - window : begin;
        const int64_t row_hi = causal ? position : end - 1;
        const int64_t j_begin = std::max<int64_t>(row_lo, begin) - begin;
        const int64_t j_end = std::min<int64_t>(row_hi + 1, end) - begin;
        if (j_begin >= j_end) continue;
        const uint32_t* mask_row =
            mask_rows != nullptr && end > dense_until
                ? mask_rows + static_cast<int64_t>(task.row_begin + r) * mask_row_words
                : nullptr;
        for (int32_t g = 0; g < group; ++g) {
          const size_t slot = static_cast<size_t>(r) * group + g;
          const float* q = &q_[slot * dim_];
          for (int j = 0; j < n; ++j) {
            const int64_t t = begin + j;
            if (j < j_begin || j >= j_end ||
                (mask_row != nullptr && ((mask_row[t / 32] >> (t % 32)) & 1u) == 0)) {
              logits_[j] = kNegInf;
              continue;
            }
            float s = Dot(q, &k_block_[static_cast<size_t>(j) * dim_], dim_) * ctx_.sm_scale;
            const float cap = ctx_.options.logits_soft_cap;
            if (cap > 0.f) s = cap * std::tanh(s / cap);
            logits_[j] = s;
          }
          states_[slot].AddKeys(logits_.data(), v_block_.data(), n, dim_);
        }
      }
    }

    for (int32_t r = 0; r < rows; ++r) {
      const int64_t row = qo_begin + task.row_begin + r;
      for (int32_t g = 0; g < group; ++g) {
        const int32_t h = task.kv_head * group + g;
        AttentionState& state = states_[static_cast<size_t>(r) * group + g];
        if (ctx_.options.sinks) state.AddSink(ctx_.options.sinks[h]);
        state.WriteNormalized(out_.data());
        StoreRow(ctx_.qo.o, ctx_.qo.q_dtype, (row * num_qo_heads + h) * dim_, dim_, out_.data());
        if (ctx_.qo.lse) ctx_.qo.lse[row * num_qo_heads + h] = state.lse();
      }
    }
  }

 private:
  // k_block_[j] / v_block_[j] = K / V of kv position begin + j (K rotated), j < n.
  void LoadKeyBlock(int32_t b, int32_t kv_head, int64_t begin, int n, int64_t rope_offset) {
    for (int j = 0; j < n; ++j) {
      const int64_t t = begin + j;
      const int64_t offset = ctx_.keys.Offset(b, t, kv_head);
      float* k = &k_block_[static_cast<size_t>(j) * dim_];
      float* v = &v_block_[static_cast<size_t>(j) * dim_];
      LoadRow(ctx_.keys.k_base, ctx_.kv_dtype, offset, dim_, k);
      LoadRow(ctx_.keys.v_base, ctx_.kv_dtype, offset, dim_, v);
      // FP8 scales (PagedKV::k_scale / v_scale): the stored value times the head's scale.
      if (k_scale_ != 1.f) {
        for (int d = 0; d < dim_; ++d) k[d] *= k_scale_;
      }
      if (v_scale_ != 1.f) {
        for (int d = 0; d < dim_; ++d) v[d] *= v_scale_;
      }
      if (ctx_.rope) ctx_.rope->Rotate(k, t + rope_offset);
    }
  }

  const CallContext<Keys>& ctx_;
  const int dim_;
  float k_scale_ = 1.f, v_scale_ = 1.f;   // the task's KV head's (Keys::KScale / VScale)
  std::vector<float> k_block_, v_block_;  // [kKeyBlock][head_dim]
  std::vector<float> q_;                  // [kTileRows * group][head_dim]
  std::vector<float> logits_;             // [kKeyBlock]
  std::vector<float> out_;                // [head_dim]
  std::vector<AttentionState> states_;    // [kTileRows * group]
};

template <typename Keys>
absl::Status RunAttention(const QueryOutput& qo, const Keys& keys, DType kv_dtype,
                          int32_t num_kv_heads, int32_t head_dim, const AttentionOptions& options,
                          int num_threads) {
  CallContext<Keys> ctx{qo,
                        keys,
                        options,
                        kv_dtype,
                        num_kv_heads,
                        head_dim,
                        qo.num_qo_heads / num_kv_heads,
                        options.sm_scale != 0.f
                            ? options.sm_scale
                            : static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim))),
                        std::nullopt};
  if (options.pos_encoding == PosEncoding::kRopeLlama) {
    ctx.rope.emplace(head_dim, options.rope_theta, options.rope_scale);
    // Positions used: keys 0 .. kv_len-1 and queries kv_len-qo_len .. kv_len-1 (may be < 0),
    // each shifted by the request's rope offset.
    int64_t first = std::numeric_limits<int64_t>::max(), last = std::numeric_limits<int64_t>::min();
    for (int32_t b = 0; b < qo.batch_size; ++b) {
      const int64_t kv_len = keys.KvLen(b), qo_len = ctx.QoLen(b);
      if (kv_len == 0 && qo_len == 0) continue;
      first = std::min(first, ctx.RopeOffset(b) + std::min<int64_t>(0, kv_len - qo_len));
      last = std::max(last, ctx.RopeOffset(b) + kv_len - 1);
    }
    if (auto s = ctx.rope->Precompute(first, last, num_threads); !s.ok()) return s;
  }
  std::vector<Task> tasks;  // ~16 bytes per (request, kv head, 16 query rows)
  for (int32_t b = 0; b < qo.batch_size; ++b) {
    const int64_t qo_len = ctx.QoLen(b);
    for (int64_t row = 0; row < qo_len; row += kTileRows) {
      for (int32_t h = 0; h < num_kv_heads; ++h) {
        tasks.push_back(Task{b, h, static_cast<int32_t>(row),
                             static_cast<int32_t>(std::min<int64_t>(row + kTileRows, qo_len))});
      }
    }
  }
  return ParallelFor(static_cast<int64_t>(tasks.size()), num_threads, [&]() {
    return [runner = TaskRunner<Keys>(ctx), &tasks](int64_t i) mutable {
      runner.Run(tasks[static_cast<size_t>(i)]);
    };
  });
}

}  // namespace

absl::Status PagedAttention(const PagedAttentionParams& params, int num_threads) {
  if (auto s = ValidatePagedAttention(params); !s.ok()) return s;
  const PagedKV& kv = params.kv;
  try {
    return RunAttention(params.qo, PagedKeys(kv), kv.dtype, kv.num_kv_heads, kv.head_dim,
                        params.options, num_threads);
  } catch (const std::bad_alloc&) {  // the task list or the RoPE table
    return absl::ResourceExhaustedError("CPU reference: out of host memory");
  }
}

absl::Status RaggedAttention(const RaggedAttentionParams& params, int num_threads) {
  if (auto s = ValidateRaggedAttention(params); !s.ok()) return s;
  const RaggedKV& kv = params.kv;
  try {
    return RunAttention(params.qo, RaggedKeys(kv), kv.dtype, kv.num_kv_heads, kv.head_dim,
                        params.options, num_threads);
  } catch (const std::bad_alloc&) {  // the task list or the RoPE table
    return absl::ResourceExhaustedError("CPU reference: out of host memory");
  }
}

}  // namespace attnd::kernels::cpu
