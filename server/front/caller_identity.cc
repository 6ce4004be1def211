#include "server/front/caller_identity.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace attnd::server::front {

absl::StatusOr<Identity> CallerIdentifier::Identify(const grpc::ServerContext& context) const {
  const auto& metadata = context.client_metadata();
  if (auto it = metadata.find(kPeerMetadataKey); it != metadata.end() && !it->second.empty()) {
    return core_.PeerIdentity(std::string_view(it->second.data(), it->second.size()));
  }
  Identity identity;
  if (const auto auth = context.auth_context(); auth != nullptr) {
    const std::vector<grpc::string_ref> peer = auth->GetPeerIdentity();
    if (!peer.empty()) {
      identity.principal =
          absl::StrCat("tls:", std::string(peer.front().data(), peer.front().size()));
      return identity;
    }
  }
  if (token_) {
    identity.principal = "token";
  } else if (tcp_) {
    identity.principal = "tcp-anonymous";
  }
  return identity;
}

}  // namespace attnd::server::front
