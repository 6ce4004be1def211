// gRPC server reflection (grpc.reflection.v1alpha) is off unless --grpc_reflection: it answers
// without the bearer token, and docs/security.md promises that only grpc.health.v1 does.
#pragma once

#include <grpcpp/server_builder.h>

#include "absl/status/status.h"

namespace attnd::server::front {

// Adds reflection to `builder` if `enabled`, else makes sure it has none: loading grpc++_reflection
// registers its plugin for every server of the process (a static initializer), so without the flag
// the plugin is taken out of the builder again. FAILED_PRECONDITION when enabled in a build
// without grpc++_reflection.
absl::Status ConfigureReflection(grpc::ServerBuilder& builder, bool enabled);

}  // namespace attnd::server::front
