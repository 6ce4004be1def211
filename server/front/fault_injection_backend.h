// --testonly_device_fault_after_runs=N: a test hook, never for production. A Backend decorator
// that forwards every call to the real backend and, once N Attention calls have succeeded, puts
// the device into a sticky error before the next one: it calls the real backend's
// InjectDeviceFaultForTesting() (CUDA: a trapping kernel, so the real CUDA error path is what the
// tests see). Where that is not possible (UNIMPLEMENTED on the CPU backend, or any other error)
// the decorator itself behaves as a sticky-broken device from then on: every call that returns a
// status, and Health(), returns INTERNAL "sticky device error injected ...". The daemon then sees
// what a real sticky error looks like: a failed command and an unhealthy backend.
#pragma once

#include <cstdint>
#include <memory>

#include "attnd/kernels/backend.h"

namespace attnd::server::front {

std::unique_ptr<kernels::Backend> InjectDeviceFaultAfterRuns(
    std::unique_ptr<kernels::Backend> backend, int64_t successful_runs);

}  // namespace attnd::server::front
