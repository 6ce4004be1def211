#include "server/core/pool.h"

#include <algorithm>
#include <vector>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/core/dtype_convert.h"

namespace attnd::server {

absl::StatusOr<std::shared_ptr<Pool>> Pool::Create(std::string id, std::string name,
                                                   const PoolGeometry& geometry,
                                                   kernels::Backend& backend) {
  auto memory = backend.Allocate(geometry.total_bytes);
  if (!memory.ok()) {
    return absl::Status(memory.status().code(),
                        absl::StrCat("allocating pool '", name, "' (", geometry.total_bytes,
                                     " bytes): ", memory.status().message()));
  }
  if ((*memory)->size() < geometry.total_bytes) {
    return absl::InternalError(absl::StrCat("backend returned ", (*memory)->size(),
                                            " bytes for pool '", name, "', ",
                                            geometry.total_bytes, " requested"));
  }
  // Not cleared here: the CPU backend hands out zero-filled anonymous memory that takes physical
  // memory only when touched, and clearing a large pool would commit all of it up front.
  return std::shared_ptr<Pool>(new Pool(std::move(id), std::move(name), geometry,
                                        *std::move(memory), backend.info().device_ordinal));
}

Pool::Pool(std::string id, std::string name, const PoolGeometry& geometry,
           std::unique_ptr<kernels::BackendMemory> memory, int32_t device)
    : allocator(geometry.num_pages),
      id_(std::move(id)),
      name_(std::move(name)),
      geometry_(geometry),
      memory_(std::move(memory)),
      device_(device) {}

absl::Status Pool::ClearPages(absl::Span<const int32_t> pages, kernels::Backend& backend,
                              kernels::Stream* stream) const {
  std::vector<int32_t> sorted(pages.begin(), pages.end());
  std::sort(sorted.begin(), sorted.end());
  char* base = static_cast<char*>(memory_->data());
  for (size_t begin = 0; begin < sorted.size();) {
    size_t end = begin + 1;
    while (end < sorted.size() && sorted[end] == sorted[end - 1] + 1) ++end;
    const uint64_t run_bytes = static_cast<uint64_t>(end - begin) * geometry_.page_bytes;
    for (int32_t layer = 0; layer < geometry_.num_layers; ++layer) {
      char* first = base + static_cast<uint64_t>(layer) * geometry_.layer_bytes +
                    static_cast<uint64_t>(sorted[begin]) * geometry_.page_bytes;
      if (absl::Status s = backend.Zero(first, run_bytes, stream); !s.ok()) return s;
    }
    begin = end;
  }
  return absl::OkStatus();
}

kernels::PagedKV Pool::LayerView(int32_t layer) const {
  kernels::PagedKV kv;
  kv.data = static_cast<char*>(memory_->data()) + static_cast<uint64_t>(layer) * geometry_.layer_bytes;
  kv.dtype = geometry_.kv_dtype;
  kv.num_pages = geometry_.num_pages;
  kv.page_size = geometry_.page_size;
  kv.num_kv_heads = geometry_.num_kv_heads;
  kv.head_dim = geometry_.head_dim;
  kv.SetNhdStrides();
  return kv;
}

v1::PoolInfo Pool::Info() const {
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
  absl::MutexLock lock(&mu);
  info.set_free_pages(allocator.free_pages());
  info.set_attached_sessions(static_cast<int32_t>(attachments.size()));
  return info;
}

}  // namespace attnd::server
