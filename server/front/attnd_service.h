// The gRPC service attnd.v1.Attnd (synchronous API). Each unary handler reads the session id from
// the `x-attnd-session` metadata (all but GetServerInfo and OpenSession need one), runs one
// command through the CommandRunner, and converts the status in status_convert. The Session
// stream is served by SessionStream.
#pragma once

#include <optional>
#include <string>

#include <grpcpp/grpcpp.h>

#include "attnd/v1/attnd.grpc.pb.h"
#include "server/front/access_control.h"
#include "server/front/caller_identity.h"
#include "server/front/command_runner.h"
#include "server/front/session_stream.h"

namespace attnd::server::front {

inline constexpr char kSessionMetadataKey[] = "x-attnd-session";

// The session id a unary call names, or nullopt when the metadata is absent or empty.
std::optional<std::string> SessionIdFromMetadata(const grpc::ServerContext& context);

class AttndService final : public v1::Attnd::Service {
 public:
  // `runner`, `metrics`, `streams` and `identifier` must outlive the service.
  AttndService(CommandRunner& runner, Metrics& metrics, StreamRegistry& streams,
               const CallerIdentifier& identifier);

  // Every call is refused with UNAUTHENTICATED unless `authenticator` accepts its metadata.
  // Null (the default) = no check. Set before the server starts; must outlive the service.
  void set_authenticator(const TokenAuthenticator* authenticator) {
    authenticator_ = authenticator;
  }

  grpc::Status GetServerInfo(grpc::ServerContext* context, const v1::GetServerInfoRequest* request,
                             v1::ServerInfo* response) override;
  grpc::Status OpenSession(grpc::ServerContext* context, const v1::OpenSessionRequest* request,
                           v1::OpenSessionResponse* response) override;
  grpc::Status CloseSession(grpc::ServerContext* context, const v1::CloseSessionRequest* request,
                            v1::CloseSessionResponse* response) override;

  // One unary handler per command of ATTND_SESSION_COMMANDS (attnd/v1/session_commands.h):
  //   grpc::Status Name(grpc::ServerContext*, const v1::NameRequest*, v1::NameResponse*);
#define ATTND_DECLARE_UNARY_HANDLER(Name, field)                                   \
  grpc::Status Name(grpc::ServerContext* context, const v1::Name##Request* request, \
                    v1::Name##Response* response) override;
  ATTND_SESSION_COMMANDS(ATTND_DECLARE_UNARY_HANDLER)
#undef ATTND_DECLARE_UNARY_HANDLER

  // Never called: the Session method is served raw (SerializedSession), see session_stream.h.
  grpc::Status Session(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::SessionResponse, v1::SessionRequest>* stream) override;

 private:
  // Session id from metadata -> one command -> converted status.
  template <typename Request, typename Response>
  grpc::Status RunInSession(const SessionCommand<Request, Response>& command,
                            const grpc::ServerContext& context, const Request& request,
                            Response* response);

  // The Session stream, on serialized messages.
  grpc::Status SerializedSession(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream);

  // OK or UNAUTHENTICATED (recorded in the metrics under `method`).
  grpc::Status Authenticate(MethodId method, const grpc::ServerContext& context);

  // The caller's identity, or UNAUTHENTICATED (recorded under `method`).
  absl::StatusOr<Identity> Identify(MethodId method, const grpc::ServerContext& context);

  CommandRunner& runner_;
  const CallerIdentifier& identifier_;
  SessionStream session_stream_;
  const TokenAuthenticator* authenticator_ = nullptr;
};

}  // namespace attnd::server::front
