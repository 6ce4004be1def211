#include "attnd/client/unary_session.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "attnd/client/status.h"
#include "attnd/v1/attnd.grpc.pb.h"
#include "attnd/v1/session_commands.h"

namespace attnd::client {

struct UnarySession::Stubs {
  std::unique_ptr<v1::Attnd::Stub> stub;
};

namespace {

std::chrono::system_clock::time_point DeadlineAfter(absl::Duration timeout) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(
             absl::ToChronoNanoseconds(timeout));
}

}  // namespace

UnarySession::UnarySession(std::shared_ptr<grpc::Channel> channel, UnarySessionOptions options)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stubs_(std::make_unique<Stubs>(Stubs{v1::Attnd::NewStub(channel_)})) {}

UnarySession::~UnarySession() { (void)Close(); }

absl::StatusOr<std::unique_ptr<UnarySession>> UnarySession::Open(
    std::shared_ptr<grpc::Channel> channel, const UnarySessionOptions& options) {
  std::unique_ptr<UnarySession> session(new UnarySession(std::move(channel), options));
  grpc::ClientContext context;
  context.set_deadline(DeadlineAfter(options.call_timeout));
  v1::OpenSessionRequest request;
  request.set_client_name(options.client_name);
  request.set_lease_ms(options.lease_ms);
  v1::OpenSessionResponse response;
  grpc::Status status = session->stubs_->stub->OpenSession(&context, request, &response);
  if (!status.ok()) {
    session->closed_ = true;
    return FromGrpcStatus(status);
  }
  session->session_id_ = response.session_id();
  session->lease_ms_ = response.lease_ms();
  return session;
}

void UnarySession::PrepareContext(grpc::ClientContext* context) const {
  context->set_deadline(DeadlineAfter(options_.call_timeout));
  context->AddMetadata(kSessionMetadataKey, session_id_);
}

absl::Status UnarySession::Close() {
  if (closed_) return absl::OkStatus();
  closed_ = true;
  grpc::ClientContext context;
  PrepareContext(&context);
  v1::CloseSessionResponse response;
  return FromGrpcStatus(
      stubs_->stub->CloseSession(&context, v1::CloseSessionRequest(), &response));
}

namespace {

// One unary call: Method is a pointer to the stub's blocking method for Req -> Resp.
template <typename Req, typename Resp>
absl::Status CallUnary(const UnarySession& session, v1::Attnd::Stub* stub,
                       grpc::Status (v1::Attnd::Stub::*method)(grpc::ClientContext*, const Req&,
                                                               Resp*),
                       const Req& request, Resp* response) {
  grpc::ClientContext context;
  session.PrepareContext(&context);
  return FromGrpcStatus((stub->*method)(&context, request, response));
}

}  // namespace

absl::StatusOr<v1::SessionResponse> UnarySession::Execute(v1::SessionRequest request) {
  using R = v1::SessionRequest;
  using Stub = v1::Attnd::Stub;
  v1::Attnd::Stub* stub = stubs_->stub.get();
  v1::SessionResponse response;
  response.set_request_id(request.request_id());
  absl::Status status;
  switch (request.command_case()) {
    case R::kGetServerInfo:
      status = CallUnary(*this, stub, &Stub::GetServerInfo, request.get_server_info(),
                         response.mutable_server_info());
      break;
#define ATTND_UNARY_CASE(Name, field)                                                      \
  case R::k##Name:                                                                         \
    status = CallUnary(*this, stub, &Stub::Name, request.field(), response.mutable_##field()); \
    break;
    ATTND_SESSION_COMMANDS(ATTND_UNARY_CASE)
#undef ATTND_UNARY_CASE
    case R::kOpen:
      return absl::InvalidArgumentError(
          "`open` is a Session-stream command; a unary session is opened by OpenSession");
    case R::COMMAND_NOT_SET:
      return absl::InvalidArgumentError("SessionRequest.command is not set");
    default:  // a command newer than this client's unary mapping
      return absl::UnimplementedError(absl::StrCat("SessionRequest command ",
                                                   static_cast<int>(request.command_case()),
                                                   " has no unary mapping in this client"));
  }
  if (!status.ok()) return status;
  return response;
}

}  // namespace attnd::client
