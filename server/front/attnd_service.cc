#include "server/front/attnd_service.h"

#include <grpcpp/support/method_handler.h>

#include <utility>

#include "server/core/host_budget.h"
#include "server/front/status_convert.h"

namespace attnd::server::front {
namespace {

absl::Status MissingSessionError() {
  return absl::FailedPreconditionError(
      "missing x-attnd-session metadata; call OpenSession first or use the Session stream");
}

}  // namespace

std::optional<std::string> SessionIdFromMetadata(const grpc::ServerContext& context) {
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find(kSessionMetadataKey);
  if (it == metadata.end() || it->second.empty()) return std::nullopt;
  return std::string(it->second.data(), it->second.size());
}

AttndService::AttndService(CommandRunner& runner, Metrics& metrics, StreamRegistry& streams,
                           const CallerIdentifier& identifier)
    : runner_(runner), identifier_(identifier), session_stream_(runner, metrics, streams) {
  // The Session method gets a handler on serialized messages, so that SessionStream can tell a
  // message that does not parse from the end of the stream. Methods are numbered in the order
  // of the proto's service definition, as the generated constructor registers them.
  const int session_method = v1::SessionRequest::descriptor()
                                 ->file()
                                 ->FindServiceByName("Attnd")
                                 ->FindMethodByName("Session")
                                 ->index();
  MarkMethodStreamed(
      session_method,
      new grpc::internal::BidiStreamingHandler<AttndService, grpc::ByteBuffer, grpc::ByteBuffer>(
          [](AttndService* service, grpc::ServerContext* context,
             grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
            return service->SerializedSession(context, stream);
          },
          this));
}

absl::StatusOr<Identity> AttndService::Identify(MethodId method,
                                                const grpc::ServerContext& context) {
  absl::StatusOr<Identity> identity = identifier_.Identify(context);
  if (!identity.ok()) runner_.RecordRejected(method, identity.status());
  return identity;
}

grpc::Status AttndService::Authenticate(MethodId method, const grpc::ServerContext& context) {
  if (authenticator_ == nullptr) return grpc::Status::OK;
  const absl::Status status = authenticator_->Check(context.client_metadata());
  if (status.ok()) return grpc::Status::OK;
  runner_.RecordRejected(method, status);
  return ToGrpcStatus(status);
}

template <typename Request, typename Response>
grpc::Status AttndService::RunInSession(const SessionCommand<Request, Response>& command,
                                        const grpc::ServerContext& context, const Request& request,
                                        Response* response) {
  if (grpc::Status auth = Authenticate(command.id, context); !auth.ok()) return auth;
  const std::optional<std::string> session_id = SessionIdFromMetadata(context);
  if (!session_id) {
    const absl::Status status = MissingSessionError();
    runner_.RecordRejected(command.id, status);
    return ToGrpcStatus(status);
  }
  const absl::StatusOr<Identity> caller = Identify(command.id, context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  // The request (already parsed by gRPC) and the reply's inline outputs count against the
  // session's and the daemon's host budgets while the call runs.
  MessageCharges charges;
  SessionRef session = SessionRef::Unary(*session_id, *caller);
  session.request_bytes = request.ByteSizeLong();
  session.charges = &charges;
  absl::StatusOr<Response> result = runner_.Execute(command, session, request);
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return grpc::Status::OK;
}

grpc::Status AttndService::GetServerInfo(grpc::ServerContext* context,
                                         const v1::GetServerInfoRequest*,
                                         v1::ServerInfo* response) {
  if (grpc::Status auth = Authenticate(MethodId::kGetServerInfo, *context); !auth.ok()) {
    return auth;
  }
  *response = runner_.GetServerInfo();
  return grpc::Status::OK;
}

grpc::Status AttndService::OpenSession(grpc::ServerContext* context,
                                       const v1::OpenSessionRequest* request,
                                       v1::OpenSessionResponse* response) {
  if (grpc::Status auth = Authenticate(MethodId::kOpenSession, *context); !auth.ok()) return auth;
  const absl::StatusOr<Identity> caller = Identify(MethodId::kOpenSession, *context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  absl::StatusOr<v1::OpenSessionResponse> result =
      runner_.OpenSession(*request, SessionBinding::kLeased, *caller);
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return grpc::Status::OK;
}

grpc::Status AttndService::CloseSession(grpc::ServerContext* context,
                                        const v1::CloseSessionRequest*, v1::CloseSessionResponse*) {
  if (grpc::Status auth = Authenticate(MethodId::kCloseSession, *context); !auth.ok()) return auth;
  const std::optional<std::string> session_id = SessionIdFromMetadata(*context);
  if (!session_id) {
    const absl::Status status = MissingSessionError();
    runner_.RecordRejected(MethodId::kCloseSession, status);
    return ToGrpcStatus(status);
  }
  const absl::StatusOr<Identity> caller = Identify(MethodId::kCloseSession, *context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  return ToGrpcStatus(runner_.CloseSession(SessionRef::Unary(*session_id, *caller)));
}

#define ATTND_UNARY_HANDLER(Name, field)                                                          \
  grpc::Status AttndService::Name(grpc::ServerContext* context, const v1::Name##Request* request, \
                                  v1::Name##Response* response) {                                 \
    return RunInSession(commands::k##Name, *context, *request, response);                         \
  }
ATTND_SESSION_COMMANDS(ATTND_UNARY_HANDLER)
#undef ATTND_UNARY_HANDLER

grpc::Status AttndService::Session(
    grpc::ServerContext*, grpc::ServerReaderWriter<v1::SessionResponse, v1::SessionRequest>*) {
  return ToGrpcStatus(absl::InternalError("the typed Session handler is not in use"));
}

grpc::Status AttndService::SerializedSession(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
  // Checked before the first message is read: nothing of an unauthenticated stream is parsed.
  if (grpc::Status auth = Authenticate(MethodId::kOpenSession, *context); !auth.ok()) return auth;
  const absl::StatusOr<Identity> caller = Identify(MethodId::kOpenSession, *context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  return session_stream_.Serve(*context, *stream, *caller);
}

}  // namespace attnd::server::front
