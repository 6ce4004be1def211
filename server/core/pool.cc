#include "server/core/pool.h"

#include <algorithm>
#include <vector>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/core/dtype_convert.h"
#include "server/core/ids.h"

namespace attnd::server {

bool TryReserve(std::atomic<int64_t>& counter, int64_t n, int64_t limit) {
  int64_t current = counter.load();
  do {
    if (limit > 0 && (n > limit || current > limit - n)) return false;
  } while (!counter.compare_exchange_weak(current, current + n));
  return true;
}

absl::StatusOr<std::shared_ptr<Pool>> Pool::Create(
    std::string id, std::string name, const PoolGeometry& geometry, kernels::Backend& backend,
    std::string creator_principal, int32_t max_references_per_page, HostCharge bookkeeping) {
  auto memory = backend.Allocate(geometry.total_bytes);
  if (!memory.ok()) {
    return absl::Status(memory.status().code(),
                        absl::StrCat("allocating pool '", name, "' (", geometry.total_bytes,
                                     " bytes): ", memory.status().message()));
  }
  if ((*memory)->size() < geometry.total_bytes) {
    return absl::InternalError(absl::StrCat("backend returned ", (*memory)->size(),
                                            " bytes for pool '", name, "', ", geometry.total_bytes,
                                            " requested"));
  }
  // Not cleared here: the CPU backend hands out zero-filled anonymous memory that takes physical
  // memory only when touched, and clearing a large pool would commit all of it up front.
  auto pool = std::shared_ptr<Pool>(new Pool(
      std::move(id), std::move(name), geometry, *std::move(memory), backend.info().device_ordinal,
      std::move(creator_principal), max_references_per_page, std::move(bookkeeping)));
  // FP8 scales: [K or V][layer][head] float32 in backend memory, what LayerView points at.
  if (!geometry.k_scale.empty()) {
    std::vector<float> table(geometry.k_scale);
    table.insert(table.end(), geometry.v_scale.begin(), geometry.v_scale.end());
    const size_t bytes = table.size() * sizeof(float);
    auto scales = backend.Allocate(bytes);
    if (!scales.ok()) return scales.status();
    if (auto s = backend.CopyToBackend((*scales)->data(), table.data(), bytes, nullptr); !s.ok()) {
      return s;
    }
    if (auto s = backend.Synchronize(nullptr); !s.ok()) return s;
    pool->scales_ = *std::move(scales);
  }
  return pool;
}

uint64_t Pool::BookkeepingBytes(const PoolGeometry& geometry) {
  // refcounts_ and free_list_: one int32 each per page; FP8 scales: the geometry's and the
  // table's copies (on the CPU backend the table is host memory).
  return 2 * sizeof(int32_t) * static_cast<uint64_t>(geometry.num_pages) + 4096 +
         2 * sizeof(float) * (geometry.k_scale.size() + geometry.v_scale.size());
}

absl::Status Pool::SizeLedgers(PoolAttachment& attachment, HostBudget& budget) {
  if (attachment.ledger_charge.bytes() != 0) return absl::OkStatus();
  auto charge = budget.Charge(attachment.usage,
                              2 * sizeof(int32_t) * static_cast<uint64_t>(geometry_.num_pages),
                              absl::StrCat("the page ledgers of pool '", name_, "'"));
  if (!charge.ok()) return charge.status();
  attachment.held.Reserve(geometry_.num_pages);
  attachment.pinned.Reserve(geometry_.num_pages);
  attachment.ledger_charge = *std::move(charge);
  return absl::OkStatus();
}

Pool::Pool(std::string id, std::string name, const PoolGeometry& geometry,
           std::unique_ptr<kernels::BackendMemory> memory, int32_t device,
           std::string creator_principal, int32_t max_references_per_page, HostCharge bookkeeping)
    : allocator(geometry.num_pages, max_references_per_page),
      id_(std::move(id)),
      name_(std::move(name)),
      creator_principal_(std::move(creator_principal)),
      attach_token_(NewRandomId("at-")),
      geometry_(geometry),
      memory_(std::move(memory)),
      device_(device),
      bookkeeping_(std::move(bookkeeping)) {}

bool Pool::MayAttach(const std::string& principal, absl::string_view attach_token) const {
  if (!creator_principal_.empty() && principal == creator_principal_) return true;
  return !attach_token.empty() && ConstantTimeEquals(attach_token_, attach_token);
}

PoolAttachment& Pool::Attach(const std::string& session_id, std::shared_ptr<SessionUsage> usage) {
  auto [it, inserted] = attachments.try_emplace(session_id);
  if (inserted) {
    it->second.usage = std::move(usage);
    it->second.fork_grant = NewRandomId("fg-");
    grants[it->second.fork_grant] = session_id;
  }
  return it->second;
}

PoolAttachment* Pool::FindByGrant(absl::string_view grant, std::string* session_id) {
  auto it = grants.find(grant);
  if (it == grants.end()) return nullptr;
  auto attachment = attachments.find(it->second);
  if (attachment == attachments.end()) return nullptr;
  if (session_id != nullptr) *session_id = it->second;
  return &attachment->second;
}

void Pool::Detach(const std::string& session_id) {
  auto it = attachments.find(session_id);
  if (it == attachments.end()) return;
  PoolAttachment& attachment = it->second;
  attachment.usage->page_references.fetch_sub(attachment.held.total_references());
  allocator.ReleaseAll(attachment.held);
  allocator.ReleaseAll(attachment.pinned);
  grants.erase(attachment.fork_grant);
  attachments.erase(it);
}

absl::Status Pool::ClearPages(absl::Span<const int32_t> pages, kernels::Backend& backend,
                              kernels::Stream* stream) const {
  std::vector<int32_t> sorted(pages.begin(), pages.end());
  std::sort(sorted.begin(), sorted.end());
  char* base = static_cast<char*>(memory_->data());
  for (size_t begin = 0; begin < sorted.size();) {
    size_t end = begin + 1;
    while (end < sorted.size() && sorted[end] == sorted[end - 1] + 1) ++end;
    const uint64_t run_bytes = static_cast<uint64_t>(end - begin) * geometry_.page_bytes;
    // The run's pages in every layer: one strided zero (layer l at + l * layer_bytes).
    char* first = base + static_cast<uint64_t>(sorted[begin]) * geometry_.page_bytes;
    if (absl::Status s =
            backend.ZeroRows(first, run_bytes, geometry_.layer_bytes, geometry_.num_layers, stream);
        !s.ok()) {
      return s;
    }
    begin = end;
  }
  return absl::OkStatus();
}

kernels::PagedKV Pool::LayerView(int32_t layer) const {
  kernels::PagedKV kv;
  kv.data =
      static_cast<char*>(memory_->data()) + static_cast<uint64_t>(layer) * geometry_.layer_bytes;
  kv.dtype = geometry_.kv_dtype;
  kv.num_pages = geometry_.num_pages;
  kv.page_size = geometry_.page_size;
  kv.num_kv_heads = geometry_.num_kv_heads;
  kv.head_dim = geometry_.head_dim;
  kv.SetNhdStrides();
  if (scales_ != nullptr) {  // [K or V][layer][head]
    const float* table = static_cast<const float*>(scales_->data());
    const size_t per_kind = geometry_.k_scale.size();
    kv.k_scale = table + static_cast<size_t>(layer) * geometry_.num_kv_heads;
    kv.v_scale = kv.k_scale + per_kind;
  }
  return kv;
}

v1::PoolInfo Pool::Info(const std::string& session_id) const {
  const uint64_t elem = kernels::DTypeSize(geometry_.kv_dtype);
  const uint64_t head = static_cast<uint64_t>(geometry_.head_dim) * elem;
  const uint64_t token = head * static_cast<uint64_t>(geometry_.num_kv_heads);
  const uint64_t kv = token * static_cast<uint64_t>(geometry_.page_size);
  v1::PoolInfo info;
  info.set_pool_id(id_);
  info.set_name(name_);
  info.set_num_layers(geometry_.num_layers);
  info.set_num_kv_heads(geometry_.num_kv_heads);
  info.set_head_dim(geometry_.head_dim);
  info.set_page_size(geometry_.page_size);
  info.set_kv_dtype(ToProtoDType(geometry_.kv_dtype));
  info.mutable_k_scale()->Add(geometry_.k_scale.begin(), geometry_.k_scale.end());
  info.mutable_v_scale()->Add(geometry_.v_scale.begin(), geometry_.v_scale.end());
  info.set_num_pages(geometry_.num_pages);
  info.set_total_bytes(geometry_.total_bytes);
  info.set_layout(v1::KV_LAYOUT_NHD);
  info.set_layer_stride_bytes(geometry_.layer_bytes);
  info.set_page_stride_bytes(2 * kv);
  info.set_kv_stride_bytes(kv);
  info.set_token_stride_bytes(token);
  info.set_head_stride_bytes(head);
  info.set_cuda_ipc_handle(memory_->ipc_handle());
  info.set_device(device_);
  info.set_base_offset_bytes(0);
  info.set_attach_token(attach_token_);
  absl::MutexLock lock(&mu);
  if (auto it = attachments.find(session_id); it != attachments.end()) {
    info.set_fork_grant(it->second.fork_grant);
  }
  info.set_free_pages(allocator.free_pages());
  info.set_attached_sessions(static_cast<int32_t>(attachments.size()));
  return info;
}

}  // namespace attnd::server
