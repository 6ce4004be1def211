// File descriptors of the daemon. Every registered shared-memory buffer holds one, every client
// connection one or more, and the limit most systems start a process with (RLIMIT_NOFILE's soft
// limit, often 1024) is smaller than one session's buffer quota: 1,013 buffers of one session
// used to make the daemon unable to accept new clients. So at start the soft limit is raised to
// the hard limit, and the core may hand out only what leaves a reserve for connections, the
// backend and the logs (DaemonConfig::max_open_buffer_fds).
#pragma once

#include <cstdint>
#include <string>

namespace attnd::server::front {

struct FdLimits {
  uint64_t soft_at_start = 0;  // RLIMIT_NOFILE when the process started
  uint64_t hard = 0;
  uint64_t soft = 0;        // after RaiseFdLimit
  std::string raise_error;  // why the soft limit could not be raised; empty if it was (or was
                            // at the hard limit already)
  int64_t max_open_buffer_fds = 0;  // BufferFdBudget(soft)
};

// The descriptors client buffers may hold under a limit of `soft_limit`: all but a reserve of
// max(256, 10%) for connections, the backend and the logs; of a limit under 512, half.
int64_t BufferFdBudget(uint64_t soft_limit);

// Raises RLIMIT_NOFILE's soft limit to the hard one (to the kernel's fs.nr_open where the hard
// limit is unlimited), logs the limits and the budget, and returns them. A failure to raise is
// logged and leaves the limit as it was.
FdLimits RaiseFdLimit();

}  // namespace attnd::server::front
