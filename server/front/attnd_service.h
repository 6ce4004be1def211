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

  grpc::Status CreatePool(grpc::ServerContext* context, const v1::CreatePoolRequest* request,
                          v1::CreatePoolResponse* response) override;
  grpc::Status AttachPool(grpc::ServerContext* context, const v1::AttachPoolRequest* request,
                          v1::AttachPoolResponse* response) override;
  grpc::Status DescribePool(grpc::ServerContext* context, const v1::DescribePoolRequest* request,
                            v1::DescribePoolResponse* response) override;
  grpc::Status DeletePool(grpc::ServerContext* context, const v1::DeletePoolRequest* request,
                          v1::DeletePoolResponse* response) override;
  grpc::Status AllocatePages(grpc::ServerContext* context,
                             const v1::AllocatePagesRequest* request,
                             v1::AllocatePagesResponse* response) override;
  grpc::Status FreePages(grpc::ServerContext* context, const v1::FreePagesRequest* request,
                         v1::FreePagesResponse* response) override;
  grpc::Status ForkPages(grpc::ServerContext* context, const v1::ForkPagesRequest* request,
                         v1::ForkPagesResponse* response) override;
  grpc::Status RegisterBuffer(grpc::ServerContext* context,
                              const v1::RegisterBufferRequest* request,
                              v1::RegisterBufferResponse* response) override;
  grpc::Status UnregisterBuffer(grpc::ServerContext* context,
                                const v1::UnregisterBufferRequest* request,
                                v1::UnregisterBufferResponse* response) override;
  grpc::Status CreatePlan(grpc::ServerContext* context, const v1::CreatePlanRequest* request,
                          v1::CreatePlanResponse* response) override;
  grpc::Status DeletePlan(grpc::ServerContext* context, const v1::DeletePlanRequest* request,
                          v1::DeletePlanResponse* response) override;
  grpc::Status AppendKv(grpc::ServerContext* context, const v1::AppendKvRequest* request,
                        v1::AppendKvResponse* response) override;
  grpc::Status Run(grpc::ServerContext* context, const v1::RunRequest* request,
                   v1::RunResponse* response) override;
  grpc::Status RegisterEvent(grpc::ServerContext* context, const v1::RegisterEventRequest* request,
                             v1::RegisterEventResponse* response) override;
  grpc::Status UnregisterEvent(grpc::ServerContext* context,
                               const v1::UnregisterEventRequest* request,
                               v1::UnregisterEventResponse* response) override;
  grpc::Status GetCompletionEvent(grpc::ServerContext* context,
                                  const v1::GetCompletionEventRequest* request,
                                  v1::GetCompletionEventResponse* response) override;

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
