// One client session: what it is attached to and what it holds. Closing it releases everything.
//
// Locking: `mu` serialises the session's commands (a session's commands are ordered anyway) and
// guards every field below it. Closing takes `mu` too, so it waits for an in-flight run of the
// session to finish before pages are released. The lease deadline belongs to the registry
// (guarded by the registry's mutex).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "attnd/kernels/backend.h"
#include "server/core/buffer.h"
#include "server/core/core.h"
#include "server/core/host_budget.h"
#include "server/core/ids.h"
#include "server/core/plan.h"
#include "server/core/pool.h"
#include "server/core/staging.h"

namespace attnd::server {

struct Session {
  Session(std::string id, std::string client_name, SessionBinding binding, absl::Duration lease,
          Identity owner)
      : id(std::move(id)),
        tag(SessionLogTag(this->id)),
        client_name(std::move(client_name)),
        binding(binding),
        lease(lease),
        owner(std::move(owner)) {}

  const std::string id;           // secret for leased sessions: never logged
  const std::string tag;          // what logs show ("s17")
  const std::string client_name;  // escaped (no control characters), at most 256 bytes
  const SessionBinding binding;
  const absl::Duration lease;  // leased sessions only
  const Identity owner;        // who opened it (unary calls must come from the same identity)
  const std::shared_ptr<SessionUsage> usage = std::make_shared<SessionUsage>();
  // Commands of this session executing or waiting for `mu` (CoreOptions::max_inflight_per_session).
  std::atomic<int64_t> inflight{0};

  absl::Mutex mu;
  bool closed ABSL_GUARDED_BY(mu) = false;
  // Declared before `plans`, so it is destroyed after them: CUDA plans free their memory in
  // this stream's order (cuda_backend.cc).
  std::unique_ptr<kernels::Stream> stream ABSL_GUARDED_BY(mu);  // created on first use
  absl::flat_hash_map<std::string, std::shared_ptr<Pool>> pools ABSL_GUARDED_BY(mu);  // by id
  absl::flat_hash_map<std::string, std::shared_ptr<Plan>> plans ABSL_GUARDED_BY(mu);
  // The plan of the last RunRagged, kept (and charged) until the next one or the session's end:
  // work enqueued with COMPLETION_ASYNC may still read it. Destroyed before `stream`, too.
  std::unique_ptr<kernels::PreparedPlan> ragged_plan ABSL_GUARDED_BY(mu);
  HostCharge ragged_charge ABSL_GUARDED_BY(mu);
  // The running command's message charges (State::WithSession); its reply's inline outputs are
  // charged here (CheckReplyFits). Null between commands.
  MessageCharges* command_charges ABSL_GUARDED_BY(mu) = nullptr;
  absl::flat_hash_map<std::string, std::shared_ptr<RegisteredBuffer>> buffers ABSL_GUARDED_BY(mu);
  StagingArea staging ABSL_GUARDED_BY(mu);
  // Async completion: the engine's events opened by RegisterEvent (by id), and the session's own
  // interprocess completion event (created by the first GetCompletionEvent or ASYNC command).
  absl::flat_hash_map<std::string, std::unique_ptr<kernels::Event>> events ABSL_GUARDED_BY(mu);
  std::unique_ptr<kernels::Event> completion_event ABSL_GUARDED_BY(mu);
};

}  // namespace attnd::server
