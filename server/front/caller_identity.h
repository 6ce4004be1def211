// Who a call comes from (the wire API's "Identity"), from what its connection proves, never from
// a request field: the x-attnd-peer key (the peer socket's kernel credentials, looked up in the
// Core), a TLS client certificate, the bearer token, or, on TCP without either, "tcp-anonymous".
#pragma once

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "server/core/core.h"

namespace attnd::server::front {

inline constexpr char kPeerMetadataKey[] = "x-attnd-peer";

class CallerIdentifier {
 public:
  // `tcp`: the gRPC listener is TCP; `token`: a bearer token is required (and was checked before
  // Identify is called). `core` must outlive this object.
  CallerIdentifier(const Core& core, bool tcp, bool token) : core_(core), tcp_(tcp), token_(token) {}

  // UNAUTHENTICATED for an x-attnd-peer key the daemon does not know (its connection closed).
  absl::StatusOr<Identity> Identify(const grpc::ServerContext& context) const;

 private:
  const Core& core_;
  const bool tcp_;
  const bool token_;
};

}  // namespace attnd::server::front
