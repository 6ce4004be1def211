// Host helpers for the GPU-host programs that start their own daemon (ipc_e2e_test and
// bench/service_bench): starting `attnd --backend=cuda` as a child process on a unix socket, and
// fatal-error checks that take that daemon down with the program (no orphan daemon keeps the
// program's pipes open). Single-threaded programs only: the daemon's pid is one global.
#pragma once

#include <cuda_runtime.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace attnd::gpu_host {

// The daemon started by SpawnCudaDaemon; killed on a fatal error.
inline pid_t g_daemon = -1;

[[noreturn]] inline void Die() {
  if (g_daemon > 0) kill(g_daemon, SIGKILL);
  std::exit(2);
}

template <typename T>
T Must(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "FATAL %s: %s\n", what, v.status().ToString().c_str());
    Die();
  }
  return *std::move(v);
}

inline void MustOk(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "FATAL %s: %s\n", what, s.ToString().c_str());
    Die();
  }
}

// `attnd` in the directory of `argv0` (where the GPU bundle puts it).
inline std::string AttndNextTo(const std::string& argv0) {
  return argv0.substr(0, argv0.find_last_of('/') + 1) + "attnd";
}

// Forks `attnd_bin --backend=cuda --listen=unix://<socket> --http_listen= --log_level=<level>`
// plus `extra` flags; the child dies with this process. Records it in g_daemon (the first one
// only), then waits up to 30 s for the socket file to appear (the caller checks that it did).
// Returns the daemon's pid.
inline pid_t SpawnCudaDaemon(const std::string& attnd_bin, const std::string& socket,
                             const char* log_level, const std::vector<std::string>& extra = {}) {
  const pid_t daemon = fork();
  if (daemon == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // the daemon dies with this process
    std::vector<std::string> args = {attnd_bin, "--backend=cuda", "--listen=unix://" + socket,
                                     "--http_listen=", std::string("--log_level=") + log_level};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(attnd_bin.c_str(), argv.data());
    std::perror("exec attnd");
    _exit(127);
  }
  if (g_daemon <= 0) g_daemon = daemon;
  for (int i = 0; i < 300 && access(socket.c_str(), F_OK) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return daemon;
}

}  // namespace attnd::gpu_host

// Exits through Die() (killing the daemon) when a CUDA runtime call fails.
#define CK(expr)                                                                          \
  do {                                                                                    \
    cudaError_t e_ = (expr);                                                              \
    if (e_ != cudaSuccess) {                                                              \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,                  \
                   cudaGetErrorString(e_));                                               \
      ::attnd::gpu_host::Die();                                                           \
    }                                                                                     \
  } while (0)
