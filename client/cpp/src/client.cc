#include "attnd/client/client.h"

#include <chrono>
#include <future>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attnd/client/status.h"
#include "attnd/v1/attnd.grpc.pb.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/client_interceptor.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/channel_arguments.h"

namespace attnd::client {
namespace {

std::chrono::system_clock::time_point DeadlineAfter(absl::Duration timeout) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(
             absl::ToChronoNanoseconds(timeout));
}

// grpc.health.v1 messages are tiny: HealthCheckRequest{string service = 1} and
// HealthCheckResponse{ServingStatus status = 1}. They are encoded here with protobuf's
// UnknownFieldSet instead of generated code, so this library never registers a second copy of
// health.proto in a process that also links the daemon's.
std::string EncodeHealthRequest(const std::string& service) {
  google::protobuf::UnknownFieldSet fields;
  if (!service.empty()) fields.AddLengthDelimited(1, service);
  std::string bytes;
  fields.SerializeToString(&bytes);
  return bytes;
}

absl::StatusOr<HealthStatus> DecodeHealthResponse(const std::string& bytes) {
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(bytes)) {
    return absl::InternalError("could not parse grpc.health.v1.HealthCheckResponse");
  }
  uint64_t status = 0;  // proto3 default UNKNOWN when the field is absent
  for (int i = 0; i < fields.field_count(); ++i) {
    const auto& field = fields.field(i);
    if (field.number() == 1 && field.type() == google::protobuf::UnknownField::TYPE_VARINT) {
      status = field.varint();
    }
  }
  if (status > 3) return HealthStatus::kUnknown;
  return static_cast<HealthStatus>(status);
}

// Adds "authorization: Bearer <token>" to the initial metadata of every call of the channel.
class BearerTokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerTokenInterceptor(const std::string& header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", header_});
    }
    methods->Proceed();
  }

 private:
  const std::string& header_;
};

class BearerTokenInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerTokenInterceptorFactory(const std::string& token)
      : header_("Bearer " + token) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new BearerTokenInterceptor(header_);
  }

 private:
  const std::string header_;  // outlives the interceptors: the channel owns the factory
};

// Adds "x-attnd-peer: <key>" (the process's peer key) to the initial metadata of every call.
class PeerKeyInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit PeerKeyInterceptor(PeerLink& link) : link_(link) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      key_ = link_.Key();
      if (!key_.empty()) methods->GetSendInitialMetadata()->insert({"x-attnd-peer", key_});
    }
    methods->Proceed();
  }

 private:
  PeerLink& link_;
  std::string key_;  // the metadata map refers to it until the call ends
};

class PeerKeyInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit PeerKeyInterceptorFactory(std::shared_ptr<PeerLink> link) : link_(std::move(link)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new PeerKeyInterceptor(*link_);
  }

 private:
  const std::shared_ptr<PeerLink> link_;
};

}  // namespace

const char* HealthStatusName(HealthStatus status) {
  switch (status) {
    case HealthStatus::kUnknown: return "UNKNOWN";
    case HealthStatus::kServing: return "SERVING";
    case HealthStatus::kNotServing: return "NOT_SERVING";
    case HealthStatus::kServiceUnknown: return "SERVICE_UNKNOWN";
  }
  return "UNKNOWN";
}

Client::Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel,
               std::shared_ptr<PeerLink> peer_link)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      peer_link_(std::move(peer_link)) {}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("ClientOptions.target is empty");
  if (options.max_message_bytes <= 0 ||
      options.max_message_bytes > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("ClientOptions.max_message_bytes=",
                                                   options.max_message_bytes,
                                                   " is outside 1..2^31-1"));
  }
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (options.tls) {
    if (options.tls_client_cert_pem.empty() != options.tls_client_key_pem.empty()) {
      return absl::InvalidArgumentError(
          "ClientOptions.tls_client_cert_pem and tls_client_key_pem go together");
    }
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs_pem;
    ssl.pem_cert_chain = options.tls_client_cert_pem;
    ssl.pem_private_key = options.tls_client_key_pem;
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(options.tls_server_name);
    }
  }
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  if (!options.token.empty()) {
    interceptors.push_back(std::make_unique<BearerTokenInterceptorFactory>(options.token));
  }
  const std::string peer_path = options.peer_socket == "none" ? std::string()
                                : options.peer_socket.empty()
                                    ? PeerLink::DefaultPathFor(options.target)
                                    : options.peer_socket;
  std::shared_ptr<PeerLink> peer_link;
  if (!peer_path.empty()) {
    peer_link = std::make_shared<PeerLink>(peer_path);
    interceptors.push_back(std::make_unique<PeerKeyInterceptorFactory>(peer_link));
  }
  std::shared_ptr<grpc::Channel> channel = grpc::experimental::CreateCustomChannelWithInterceptors(
      options.target, credentials, args, std::move(interceptors));
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("could not create a channel to target=", options.target));
  }
  return std::unique_ptr<Client>(new Client(options, std::move(channel), std::move(peer_link)));
}

absl::Status Client::WaitForConnected(absl::Duration timeout) {
  if (channel_->WaitForConnected(DeadlineAfter(timeout))) return absl::OkStatus();
  return absl::DeadlineExceededError(absl::StrCat("could not connect to ", options_.target,
                                                  " within ", absl::FormatDuration(timeout)));
}

absl::StatusOr<v1::ServerInfo> Client::GetServerInfo() {
  auto stub = v1::Attnd::NewStub(channel_);
  grpc::ClientContext context;
  context.set_deadline(DeadlineAfter(options_.default_deadline));
  v1::ServerInfo info;
  grpc::Status status = stub->GetServerInfo(&context, v1::GetServerInfoRequest(), &info);
  if (!status.ok()) return FromGrpcStatus(status);
  return info;
}

absl::StatusOr<HealthStatus> Client::CheckHealth(const std::string& service) {
  grpc::GenericStub stub(channel_);
  grpc::ClientContext context;
  context.set_deadline(DeadlineAfter(options_.default_deadline));
  const std::string request_bytes = EncodeHealthRequest(service);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                 &response, [&done](grpc::Status status) { done.set_value(std::move(status)); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) return FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) {
    return absl::InternalError("could not read the health check response");
  }
  std::string response_bytes;
  for (const grpc::Slice& s : slices) {
    response_bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return DecodeHealthResponse(response_bytes);
}

absl::StatusOr<std::unique_ptr<Session>> Client::OpenSession(const std::string& client_name) {
  SessionOptions options;
  options.client_name = client_name.empty() ? options_.client_name : client_name;
  options.command_timeout = options_.default_deadline;
  absl::StatusOr<std::unique_ptr<Session>> session = Session::Open(channel_, options);
  if (session.ok()) (*session)->set_peer_link(peer_link_);
  return session;
}

absl::StatusOr<std::unique_ptr<UnarySession>> Client::OpenUnarySession(
    const std::string& client_name, uint32_t lease_ms) {
  UnarySessionOptions options;
  options.client_name = client_name.empty() ? options_.client_name : client_name;
  options.lease_ms = lease_ms;
  options.call_timeout = options_.default_deadline;
  absl::StatusOr<std::unique_ptr<UnarySession>> session = UnarySession::Open(channel_, options);
  if (session.ok()) (*session)->set_peer_link(peer_link_);
  return session;
}

}  // namespace attnd::client
