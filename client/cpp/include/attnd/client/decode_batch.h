// A running decode batch whose plan lives across steps (streamed page-table updates, attnd.proto
// PlanDelta): each Step() gives every request one new token position (a page from the pool when
// its last page is full), applies the pending Leave()s and Join()s, and sends only those changes
// (UpdatePlan; the first Step() creates the plan). The C++ twin of the Python client's
// attnd.DecodeBatch.
//
//   client::DecodeBatch batch(session, pool_id, page_size, plan_spec_defaults);
//   auto a = batch.Join(prompt_pages, prompt_len);       // a prefilled request
//   for (step ...) {
//     ATTND_RETURN_IF_ERROR(batch.Step());                // one new token per request
//     for (layer ...) batch.Run(layer, q, k, v);          // rows in batch.handles() order
//     if (done) batch.Leave(*a);                          // at the next Step()
//   }
//
// A Step() the daemon refuses changes nothing: the pages it took are freed and the batch is as
// before (UpdatePlan is atomic). Not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnd/client/session_api.h"

namespace attnd::client {

class DecodeBatch {
 public:
  // `plan`: the plan's fixed fields (num_qo_heads, q_dtype); its pool_id, kind and page table
  // are the batch's. page_size: the pool's.
  DecodeBatch(SessionApi& session, std::string pool_id, int32_t page_size, PlanSpec plan = {});
  ~DecodeBatch();  // deletes the plan and frees the pages the batch owns (errors ignored)
  DecodeBatch(const DecodeBatch&) = delete;
  DecodeBatch& operator=(const DecodeBatch&) = delete;

  // A request whose first kv_len tokens are in `pages` (held by this session, exactly
  // ceil(kv_len / page_size) of them) joins at the next Step(); returns its handle. owns_pages:
  // the batch frees its pages (given and taken) when it leaves. INVALID_ARGUMENT on a page count
  // that does not match.
  absl::StatusOr<int64_t> Join(std::vector<int32_t> pages, int32_t kv_len, bool owns_pages = true);
  // The request leaves at the next Step() (at once when it never was in the plan).
  absl::Status Leave(int64_t handle);
  // One step: see the top of the file.
  absl::Status Step();
  // One layer of the step (RunArgs with plan_id set): appends the new tokens' k/v and attends.
  absl::StatusOr<v1::RunResponse> Run(RunArgs args);
  absl::StatusOr<RunOutput> RunAndDecode(RunArgs args);

  // The requests of the live plan, in its row order; a request's tokens and pages.
  std::vector<int64_t> handles() const;
  absl::StatusOr<int32_t> kv_len(int64_t handle) const;
  absl::StatusOr<std::vector<int32_t>> pages(int64_t handle) const;
  const std::string& plan_id() const { return plan_id_; }
  int64_t steps() const { return steps_; }

 private:
  struct Request {
    int64_t handle = 0;
    std::vector<int32_t> pages;
    int32_t kv_len = 0;  // tokens in the pages
    bool owns_pages = true;
    bool in_plan = false;
    bool leaving = false;
    std::vector<int32_t> new_pages;  // taken for the pending step
  };
  const Request* Find(int64_t handle) const;
  int32_t LastLen(const Request& r) const;
  void Release(Request& r);

  SessionApi& session_;
  std::string pool_id_;
  int32_t page_size_;
  PlanSpec plan_;
  std::string plan_id_;
  std::vector<Request> requests_;  // plan order: in-plan requests, then pending joins
  int64_t next_handle_ = 0;
  int64_t steps_ = 0;
};

}  // namespace attnd::client
