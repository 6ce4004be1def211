#include "server/core/tensor_bindings.h"

#include "absl/strings/str_cat.h"
#include "server/core/dtype_convert.h"
#include "server/core/validation.h"

namespace attnd::server {

absl::StatusOr<std::shared_ptr<RegisteredBuffer>> TensorBindings::FindBuffer(
    const v1::Tensor& tensor, absl::string_view name, uint64_t bytes, kernels::DType dtype) const {
  const v1::BufferSlice& slice = tensor.buffer();
  auto it = ctx_.buffers.find(slice.buffer_id());
  if (it == ctx_.buffers.end()) {
    // Another session's buffer ids are unknown here too: never say whether the id exists.
    return absl::NotFoundError(absl::StrCat(name, ".buffer.buffer_id='", Echo(slice.buffer_id()),
                                            "' is not a buffer of this session"));
  }
  if (auto s = ValidateSlice(name, slice, bytes, kernels::DTypeSize(dtype),
                             ctx_.backend.info().tensor_alignment_bytes, it->second->data(),
                             it->second->size());
      !s.ok()) {
    return s;
  }
  return it->second;
}

absl::StatusOr<int> TensorBindings::AddInput(const v1::Tensor& tensor, absl::string_view name,
                                             kernels::DType dtype,
                                             const std::vector<int64_t>& shape) {
  auto bytes = ValidateTensor(tensor, name, dtype, shape);
  if (!bytes.ok()) return bytes.status();
  Binding binding;
  binding.bytes = *bytes;
  if (tensor.data_case() == v1::Tensor::kInlineData) {
    binding.inline_in = &tensor.inline_data();
  } else {
    auto buffer = FindBuffer(tensor, name, *bytes, dtype);
    if (!buffer.ok()) return buffer.status();
    binding.buffer = *std::move(buffer);
    binding.offset = tensor.buffer().offset_bytes();
  }
  bindings_.push_back(std::move(binding));
  return static_cast<int>(bindings_.size()) - 1;
}

absl::StatusOr<int> TensorBindings::AddOutput(const v1::Tensor* tensor, absl::string_view name,
                                              kernels::DType dtype,
                                              const std::vector<int64_t>& shape,
                                              v1::Tensor* response) {
  Binding binding;
  binding.output = true;
  if (tensor != nullptr && tensor->data_case() == v1::Tensor::kInlineData) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ".inline_data is set: outputs are returned inline when ", name,
                     " is unset; give a buffer slice or nothing"));
  }
  if (tensor != nullptr && tensor->data_case() == v1::Tensor::kBuffer) {
    auto bytes = ValidateTensor(*tensor, name, dtype, shape);
    if (!bytes.ok()) return bytes.status();
    auto buffer = FindBuffer(*tensor, name, *bytes, dtype);
    if (!buffer.ok()) return buffer.status();
    binding.bytes = *bytes;
    binding.buffer = *std::move(buffer);
    binding.offset = tensor->buffer().offset_bytes();
  } else {
    uint64_t bytes = kernels::DTypeSize(dtype);
    for (const int64_t d : shape) {
      if (d < 0 || !CheckedMul(bytes, static_cast<uint64_t>(d), &bytes)) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, ": shape ", ShapeString(shape), " has no valid byte size"));
      }
    }
    binding.bytes = bytes;
    binding.inline_out = response;
    response->set_dtype(ToProtoDType(dtype));
    for (const int64_t d : shape) response->add_shape(d);
  }
  bindings_.push_back(std::move(binding));
  return static_cast<int>(bindings_.size()) - 1;
}

TensorBindings::SliceBytes TensorBindings::slice_bytes(int index) const {
  const Binding& b = bindings_[index];
  if (b.buffer == nullptr) return {};
  return {static_cast<const char*>(b.buffer->data()) + b.offset, b.bytes};
}

TensorBindings::~TensorBindings() {
  if (pending_) (void)ctx_.backend.Synchronize(ctx_.stream);
}

absl::Status TensorBindings::Materialize() {
  pending_ = true;
  const bool host = ctx_.backend.host_accessible();
  uint64_t staging_bytes = 0;
  for (Binding& b : bindings_) {
    if (b.buffer != nullptr) {
      b.ptr = static_cast<char*>(b.buffer->data()) + b.offset;
    } else if (b.inline_in != nullptr && host) {
      // The kernel only reads inputs; the request outlives the call.
      b.ptr = const_cast<char*>(b.inline_in->data());
    } else if (b.inline_out != nullptr && host) {
      std::string* out = b.inline_out->mutable_inline_data();
      out->resize(b.bytes);
      b.ptr = out->data();
    } else {
      b.staged = true;
      staging_bytes += StagingArea::AlignUp(b.bytes);
    }
    if (b.output) {
      bytes_out_ += b.bytes;
    } else {
      bytes_in_ += b.bytes;
    }
  }
  if (staging_bytes == 0) return absl::OkStatus();
  auto base = ctx_.staging.Reserve(ctx_.backend, staging_bytes);
  if (!base.ok()) return base.status();
  char* next = *base;
  for (Binding& b : bindings_) {
    if (!b.staged) continue;
    b.ptr = next;
    next += StagingArea::AlignUp(b.bytes);
    if (b.inline_in != nullptr && b.bytes > 0) {
      if (auto s = ctx_.backend.CopyToBackend(b.ptr, b.inline_in->data(), b.bytes, ctx_.stream);
          !s.ok()) {
        return s;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status TensorBindings::Complete() {
  bool copies_back = false;
  for (Binding& b : bindings_) {
    if (!b.staged || b.inline_out == nullptr) continue;
    copies_back = true;
    std::string* out = b.inline_out->mutable_inline_data();
    out->resize(b.bytes);
    if (b.bytes == 0) continue;
    if (auto s = ctx_.backend.CopyToHost(out->data(), b.ptr, b.bytes, ctx_.stream); !s.ok()) {
      return s;
    }
  }
  if (!ctx_.synchronize && !copies_back) {
    // Async: staged inline inputs were copied from pageable memory, which cudaMemcpyAsync
    // consumes before returning, so the request may be freed; the staging area is reused only
    // by later work on the same stream.
    pending_ = false;
    return absl::OkStatus();
  }
  absl::Status synced = ctx_.backend.Synchronize(ctx_.stream);
  pending_ = false;
  return synced;
}

}  // namespace attnd::server
