// A minimal fork-join loop for the CPU reference: runs body(task) for task in [0, num_tasks) on up
// to num_threads threads (the calling thread is one of them), handing out tasks dynamically.
// Each worker calls make_worker() once to get its own callable (so per-thread scratch buffers live
// inside it) and then calls it for each task it takes. Returns when every task has run.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <system_error>
#include <thread>
#include <vector>

namespace attnd::kernels::cpu {

// 0 = std::thread::hardware_concurrency() (at least 1).
inline int ResolveThreadCount(int num_threads) {
  if (num_threads > 0) return num_threads;
  return std::max(1u, std::thread::hardware_concurrency());
}

template <typename MakeWorker>
void ParallelFor(int64_t num_tasks, int num_threads, const MakeWorker& make_worker) {
  if (num_tasks <= 0) return;
  const int64_t workers = std::min<int64_t>(ResolveThreadCount(num_threads), num_tasks);
  std::atomic<int64_t> next_task{0};
  auto work_loop = [&]() {
    auto worker = make_worker();
    for (int64_t task = next_task.fetch_add(1); task < num_tasks; task = next_task.fetch_add(1)) {
      worker(task);
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(workers - 1));
  for (int64_t i = 1; i < workers; ++i) {
    try {
      threads.emplace_back(work_loop);
    } catch (const std::system_error&) {
      break;  // could not start another thread: the ones running (and this one) do the work
    }
  }
  work_loop();
  for (std::thread& t : threads) t.join();
}

}  // namespace attnd::kernels::cpu
