// Resolves the tensors of one request to backend pointers, in three phases so that every check
// happens before any memory is touched:
//   1. Add*: validate dtype, shape, inline size, buffer id and slice bounds (no memory touched);
//   2. Materialize: point at request bytes / buffer slices, or (backends that cannot read host
//      memory) copy inline inputs into the session's staging area;
//   3. Complete: copy staged outputs into the response and wait for the stream.
// Inline outputs are written straight into the response's bytes when the backend is
// host-accessible.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnd/kernels/backend.h"
#include "attnd/v1/attnd.pb.h"
#include "server/core/buffer.h"
#include "server/core/staging.h"

namespace attnd::server {

using BufferMap = absl::flat_hash_map<std::string, std::shared_ptr<RegisteredBuffer>>;

struct ExecContext {
  kernels::Backend& backend;
  kernels::Stream* stream;
  StagingArea& staging;
  const BufferMap& buffers;  // the session's registered buffers
  // False for COMPLETION_ASYNC: Complete() returns without waiting for the stream when no output
  // must be copied back into the response (the caller records the completion event instead).
  bool synchronize = true;
};

class TensorBindings {
 public:
  explicit TensorBindings(const ExecContext& ctx) : ctx_(ctx) {}
  // If work was enqueued (Materialize) but Complete did not run (an error in between), waits for
  // the stream, so no asynchronous copy still reads request memory that is about to be freed.
  ~TensorBindings();
  TensorBindings(const TensorBindings&) = delete;
  TensorBindings& operator=(const TensorBindings&) = delete;

  // An input tensor (inline or buffer slice). Returns its index for pointer().
  absl::StatusOr<int> AddInput(const v1::Tensor& tensor, absl::string_view name,
                               kernels::DType dtype, const std::vector<int64_t>& shape);
  // An output: into the buffer slice `tensor` names, or, when `tensor` is null or has no data,
  // inline into `*response` (dtype and shape are filled in).
  absl::StatusOr<int> AddOutput(const v1::Tensor* tensor, absl::string_view name,
                                kernels::DType dtype, const std::vector<int64_t>& shape,
                                v1::Tensor* response);

  // The memory binding `index` covers when it is a slice of a registered buffer: its first byte
  // (in the daemon's mapping of the buffer) and its size. first is null for an inline tensor,
  // whose bytes are the request's or the response's own and overlap nothing else.
  struct SliceBytes {
    const char* first = nullptr;
    uint64_t bytes = 0;
  };
  SliceBytes slice_bytes(int index) const;

  absl::Status Materialize();
  void* pointer(int index) const { return bindings_[index].ptr; }
  absl::Status Complete();

  uint64_t bytes_in() const { return bytes_in_; }
  uint64_t bytes_out() const { return bytes_out_; }

 private:
  struct Binding {
    bool output = false;
    uint64_t bytes = 0;
    const std::string* inline_in = nullptr;    // input bytes in the request
    v1::Tensor* inline_out = nullptr;          // response tensor receiving the output
    std::shared_ptr<RegisteredBuffer> buffer;  // or a slice of this buffer
    uint64_t offset = 0;
    bool staged = false;
    void* ptr = nullptr;
  };
  absl::StatusOr<std::shared_ptr<RegisteredBuffer>> FindBuffer(const v1::Tensor& tensor,
                                                               absl::string_view name,
                                                               uint64_t bytes,
                                                               kernels::DType dtype) const;

  const ExecContext& ctx_;
  std::vector<Binding> bindings_;
  bool pending_ = false;  // Materialize ran, Complete has not
  uint64_t bytes_in_ = 0;
  uint64_t bytes_out_ = 0;
};

}  // namespace attnd::server
