// How the attnd process ends after a stop request (SIGTERM/SIGINT, or a sticky device error):
// bounded in time, with everything attnd owns released first.
//
// Why the process does not simply return from main: grpc_shutdown (run by the last
// grpc::Server's destructor, or at exit) joins gRPC's executor threads, and after large messages
// one of them sits in the TCP backup poller's epoll_wait (tcp_posix.cc) for up to 10 s, so the
// exit came up to 10 s after "shutdown complete". By then Daemon::Shutdown and the Daemon's
// destructor have released every session, pool, buffer mapping and the socket file; what
// grpc_shutdown and the static destructors would still free is process memory and threads,
// which the kernel takes back at exit. So main holds one gRPC library reference for the life of
// the process (HoldGrpcLibrary: the Server's destructor never runs grpc_shutdown) and the process
// ends with _exit once the logs are flushed.
#pragma once

#include <memory>

#include "absl/time/time.h"
#include "server/front/daemon.h"

namespace attnd::server::front {

// Exit codes of the attnd process.
inline constexpr int kExitOk = 0;           // stopped by SIGTERM/SIGINT
inline constexpr int kExitFailure = 1;      // could not start (backend, address, ...)
inline constexpr int kExitUsage = 2;        // bad flags or environment
inline constexpr int kExitDeviceError = 3;  // sticky device error (--exit_on_device_error)

// Takes one reference on the gRPC library for the rest of the process (see above).
void HoldGrpcLibrary();

// Flushes the logs and ends the process with `exit_code` (_exit: no static destructors). In a
// build with LeakSanitizer the leak check runs first.
[[noreturn]] void ExitNow(int exit_code);

// Shutdown(drain), then destroys the daemon if Shutdown released everything (otherwise a command
// still runs on memory the daemon owns, and the process ends under it), then ExitNow(exit_code).
// A watchdog ends the process with the same code if all this is not done `drain` + 800 ms after
// the call, whatever still blocks (an HTTP client holding a connection, a wedged device).
[[noreturn]] void ShutdownAndExit(std::unique_ptr<Daemon> daemon, absl::Duration drain,
                                  int exit_code);

}  // namespace attnd::server::front
