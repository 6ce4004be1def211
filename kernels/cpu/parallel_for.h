// A minimal fork-join loop for the CPU reference: runs body(task) for task in [0, num_tasks) on up
// to num_threads threads (the calling thread is one of them), handing out tasks dynamically.
// Each worker calls make_worker() once to get its own callable (so per-thread scratch buffers live
// inside it) and then calls it for each task it takes. Returns when every task has run.
//
// Nothing escapes as an exception (a throw inside a std::thread would terminate the daemon): a
// worker that throws stops, the others stop taking tasks, and the call returns
// RESOURCE_EXHAUSTED (std::bad_alloc) or INTERNAL (anything else). Outputs are then incomplete.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <new>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/status/status.h"

namespace attnd::kernels::cpu {

// 0 = std::thread::hardware_concurrency() (at least 1).
inline int ResolveThreadCount(int num_threads) {
  if (num_threads > 0) return num_threads;
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

template <typename MakeWorker>
absl::Status ParallelFor(int64_t num_tasks, int num_threads, const MakeWorker& make_worker) {
  if (num_tasks <= 0) return absl::OkStatus();
  const int64_t workers = std::min<int64_t>(ResolveThreadCount(num_threads), num_tasks);
  std::atomic<int64_t> next_task{0};
  // 0 = fine, 1 = out of memory, 2 = other failure; the first failure wins.
  std::atomic<int> failure{0};
  auto work_loop = [&]() noexcept {
    try {
      auto worker = make_worker();
      for (int64_t task = next_task.fetch_add(1); task < num_tasks && failure.load() == 0;
           task = next_task.fetch_add(1)) {
        worker(task);
      }
    } catch (const std::bad_alloc&) {
      int expected = 0;
      failure.compare_exchange_strong(expected, 1);
    } catch (...) {
      int expected = 0;
      failure.compare_exchange_strong(expected, 2);
    }
  };
  std::vector<std::thread> threads;
  try {
    threads.reserve(static_cast<size_t>(workers - 1));
    for (int64_t i = 1; i < workers; ++i) threads.emplace_back(work_loop);
  } catch (const std::exception&) {
    // Could not start another thread: the ones running (and this one) do the work.
  }
  work_loop();
  for (std::thread& t : threads) t.join();
  switch (failure.load()) {
    case 0: return absl::OkStatus();
    case 1: return absl::ResourceExhaustedError("CPU reference: out of host memory");
    default: return absl::InternalError("CPU reference: a worker thread failed");
  }
}

}  // namespace attnd::kernels::cpu
