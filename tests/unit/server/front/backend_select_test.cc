#include "server/front/backend_select.h"

#include <gtest/gtest.h>

#include <string>

namespace attnd::server::front {
namespace {

// --backend=auto says in plain words why it runs on the CPU (CUDA's own error, e.g. "CUDA driver
// version is insufficient for CUDA runtime version" on a machine without a driver, is only the
// detail in parentheses).
TEST(BackendSelectTest, CudaUnavailableReasonSaysWhatTheMachineLacks) {
  EXPECT_EQ(CudaUnavailableReason(
                {.built_with_cuda = false, .driver_loaded = true, .device_nodes = 8}, 0),
            "this attnd was built without the CUDA backend (ATTND_CUDA=OFF, or no nvcc at build "
            "time)");
  EXPECT_EQ(CudaUnavailableReason({.built_with_cuda = true}, 0),
            "no NVIDIA driver is loaded on this machine (no GPU, or its driver is not installed)");
  EXPECT_EQ(CudaUnavailableReason({.built_with_cuda = true, .driver_loaded = true}, 0),
            "the NVIDIA driver is loaded but no GPU device is visible to this process (no "
            "/dev/nvidia0; in a container, give it the GPU)");
  EXPECT_EQ(
      CudaUnavailableReason({.built_with_cuda = true, .driver_loaded = true, .device_nodes = 2}, 2),
      "no CUDA device 2 (2 GPU device(s) visible; --device chooses one)");
  EXPECT_EQ(
      CudaUnavailableReason({.built_with_cuda = true, .driver_loaded = true, .device_nodes = 2}, 1),
      "CUDA device 1 cannot be used");
}

// On this machine: the probe agrees with the binary, and auto always ends on a backend.
TEST(BackendSelectTest, AutoFallsBackToTheCpuBackend) {
  const CudaEnvironment environment = ProbeCudaEnvironment();
#ifdef ATTND_WITH_CUDA
  EXPECT_TRUE(environment.built_with_cuda);
#else
  EXPECT_FALSE(environment.built_with_cuda);
#endif
  auto backend = CreateBackend({.kind = "auto", .device = 0, .cpu_threads = 1});
  ASSERT_TRUE(backend.ok()) << backend.status();
  if (!environment.built_with_cuda || environment.device_nodes == 0) {
    EXPECT_EQ((*backend)->info().name, "cpu");
  }
}

TEST(BackendSelectTest, CudaWithoutADeviceFailsWithThePlainReason) {
  const CudaEnvironment environment = ProbeCudaEnvironment();
  if (environment.built_with_cuda && environment.device_nodes > 0) {
    GTEST_SKIP() << "this machine has a GPU";
  }
  auto backend = CreateBackend({.kind = "cuda", .device = 0, .cpu_threads = 1});
  ASSERT_FALSE(backend.ok());
  const std::string message(backend.status().message());
  EXPECT_EQ(message.rfind(CudaUnavailableReason(environment, 0), 0), 0u) << message;
  // CUDA's own error in parentheses, when there is a CUDA to ask.
  EXPECT_EQ(message.find(" (CUDA: ") != std::string::npos, environment.built_with_cuda) << message;
  EXPECT_NE(message.find("--backend=cpu or --backend=auto run on the CPU"), std::string::npos);
}

}  // namespace
}  // namespace attnd::server::front
