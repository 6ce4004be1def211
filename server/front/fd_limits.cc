#include "server/front/fd_limits.h"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

namespace attnd::server::front {
namespace {

// The most a process may open, which an unlimited hard limit stands for (fs.nr_open).
uint64_t KernelFdMaximum() {
  uint64_t nr_open = 0;
  std::ifstream in("/proc/sys/fs/nr_open");
  if (in >> nr_open && nr_open > 0) return nr_open;
  return uint64_t{1} << 20;  // the kernel's default
}

}  // namespace

int64_t BufferFdBudget(uint64_t soft_limit) {
  const uint64_t reserve =
      std::min(std::max<uint64_t>(256, soft_limit / 10), soft_limit - soft_limit / 2);
  return static_cast<int64_t>(soft_limit - reserve);
}

FdLimits RaiseFdLimit() {
  FdLimits limits;
  rlimit current{};
  if (getrlimit(RLIMIT_NOFILE, &current) != 0) {
    limits.raise_error = std::strerror(errno);
    spdlog::warn("getrlimit(RLIMIT_NOFILE): {}", limits.raise_error);
    return limits;
  }
  limits.soft_at_start = current.rlim_cur;
  limits.hard = current.rlim_max;
  const uint64_t target = current.rlim_max == RLIM_INFINITY ? KernelFdMaximum() : current.rlim_max;
  limits.soft = current.rlim_cur;
  if (current.rlim_cur == RLIM_INFINITY || current.rlim_cur >= target) {
    limits.soft = std::min<uint64_t>(current.rlim_cur, target);
  } else {
    rlimit raised = current;
    raised.rlim_cur = target;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
      limits.soft = target;
    } else {
      limits.raise_error = std::strerror(errno);
    }
  }
  limits.max_open_buffer_fds = BufferFdBudget(limits.soft);
  if (!limits.raise_error.empty()) {
    spdlog::warn(
        "RLIMIT_NOFILE: cannot raise the soft limit {} to the hard limit {}: {}; client "
        "buffers may hold {} file descriptors",
        limits.soft_at_start, limits.hard, limits.raise_error, limits.max_open_buffer_fds);
  } else {
    spdlog::info(
        "RLIMIT_NOFILE: soft limit {} -> {} (hard limit {}); client buffers may hold {} "
        "file descriptors",
        limits.soft_at_start, limits.soft, limits.hard, limits.max_open_buffer_fds);
  }
  return limits;
}

}  // namespace attnd::server::front
