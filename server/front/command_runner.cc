#include "server/front/command_runner.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/core/ids.h"
#include "server/front/bounded_text.h"
#include "server/front/status_convert.h"

namespace attnd::server::front {
namespace {

using StreamHandler = void (*)(CommandRunner& runner, SessionRef session,
                               const v1::SessionRequest& request, v1::SessionResponse* response);

// Lines of ReportSuppressedFailures beyond which the rest are summed up in one.
constexpr size_t kMaxSuppressedReportLines = 10;

// The stream side of one table entry: unpack the oneof, execute, pack the oneof.
template <const auto& command>
void RunFromStream(CommandRunner& runner, SessionRef session, const v1::SessionRequest& request,
                   v1::SessionResponse* response) {
  auto result = runner.Execute(command, session, (request.*command.stream_request)());
  if (result.ok()) {
    *(response->*command.stream_response)() = *std::move(result);
  } else {
    SetCommandStatus(result.status(), response);
  }
}

// Indexed by SessionRequest.command's field number (2 = open, 3 = get_server_info, then the
// session commands); sized by the largest field number of the command list.
constexpr size_t kStreamTableSize = [] {
  size_t size = 0;
#define ATTND_STREAM_CASE_SIZE(Name, field) \
  size = std::max(size, static_cast<size_t>(v1::SessionRequest::k##Name) + 1);
  ATTND_SESSION_COMMANDS(ATTND_STREAM_CASE_SIZE)
#undef ATTND_STREAM_CASE_SIZE
  return size;
}();
using StreamTable = std::array<StreamHandler, kStreamTableSize>;

template <const auto& command>
constexpr void Register(StreamTable& table) {
  table[command.stream_case] = &RunFromStream<command>;
}

constexpr StreamTable kStreamTable = [] {
  StreamTable table{};
#define ATTND_REGISTER_STREAM_COMMAND(Name, field) Register<commands::k##Name>(table);
  ATTND_SESSION_COMMANDS(ATTND_REGISTER_STREAM_COMMAND)
#undef ATTND_REGISTER_STREAM_COMMAND
  return table;
}();

}  // namespace

CommandRunner::CommandRunner(Core& core, Metrics& metrics, uint64_t max_response_bytes)
    : core_(core), max_response_bytes_(max_response_bytes) {
  for (size_t i = 0; i < metrics_by_method_.size(); ++i) {
    metrics_by_method_[i] = &metrics.ForMethod(MethodName(static_cast<MethodId>(i)));
  }
}

absl::Status CommandRunner::CheckResponseSize(MethodId id, size_t bytes) const {
  // Room for the SessionResponse envelope (request_id, code, oneof tag and length).
  constexpr uint64_t kEnvelopeBytes = 64;
  if (max_response_bytes_ == 0 || bytes + kEnvelopeBytes <= max_response_bytes_) {
    return absl::OkStatus();
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("the ", std::string(MethodName(id)), " response is ", bytes,
                   " bytes, over --max_message_bytes=", max_response_bytes_,
                   "; write o and lse to registered buffers instead of receiving them inline"));
}

void CommandRunner::Finish(MethodId id, std::string_view session_id, const absl::Status& status,
                           std::chrono::steady_clock::time_point start) {
  const absl::Duration elapsed = absl::FromChrono(std::chrono::steady_clock::now() - start);
  metrics_by_method_[static_cast<size_t>(id)]->Record(status.code(), elapsed);
  if (!status.ok()) {
    LogFailure(id, session_id, status);
    // A sticky device error must not wait for the next periodic health check.
    if (backend_error_handler_) {
      if (const absl::Status health = core_.Health(); !health.ok()) backend_error_handler_(health);
    }
  }
}

void CommandRunner::LogFailure(MethodId id, std::string_view session_id,
                               const absl::Status& status) {
  const std::string_view method = MethodName(id);
  // Session ids are secrets of their clients: logs name the session by its tag only ("s17").
  const std::string source =
      absl::StrCat(absl::string_view(method.data(), method.size()), " in session ",
                   session_id.empty() ? std::string("-") : SessionLogTag(session_id));
  uint64_t suppressed = 0;
  if (!failure_log_limit_.Admit(source, absl::Now(), &suppressed)) return;
  if (suppressed > 0) spdlog::warn("suppressed {} similar errors: {}", suppressed, source);
  spdlog::warn("{} failed: {}: {}", source, StatusCodeName(status.code()),
               StatusMessageForClient(status));
}

void CommandRunner::ReportSuppressedFailures() {
  const auto unreported = failure_log_limit_.TakeUnreported(absl::Now());
  uint64_t rest = 0;
  for (size_t i = 0; i < unreported.size(); ++i) {
    const auto& [source, count] = unreported[i];
    if (i < kMaxSuppressedReportLines) {
      spdlog::warn("suppressed {} similar errors: {}", count, source);
    } else {
      rest += count;
    }
  }
  if (rest > 0) {
    spdlog::warn("suppressed {} more errors of {} more sessions and methods", rest,
                 unreported.size() - kMaxSuppressedReportLines);
  }
}

void CommandRunner::RecordRejected(MethodId id, const absl::Status& status) {
  Finish(id, "", status, std::chrono::steady_clock::now());
}

v1::ServerInfo CommandRunner::GetServerInfo() {
  InFlightCalls::Scope in_flight(in_flight_);
  const auto start = std::chrono::steady_clock::now();
  v1::ServerInfo info = core_.GetServerInfo();
  Finish(MethodId::kGetServerInfo, "", absl::OkStatus(), start);
  return info;
}

absl::StatusOr<v1::OpenSessionResponse> CommandRunner::OpenSession(
    const v1::OpenSessionRequest& request, SessionBinding binding, const Identity& owner) {
  InFlightCalls::Scope in_flight(in_flight_);
  const auto start = std::chrono::steady_clock::now();
  auto result = core_.OpenSession(request, binding, owner);
  Finish(MethodId::kOpenSession, result.ok() ? result->session_id() : "", result.status(), start);
  return result;
}

absl::Status CommandRunner::CloseSession(SessionRef session) {
  InFlightCalls::Scope in_flight(in_flight_);
  const auto start = std::chrono::steady_clock::now();
  absl::Status status = core_.CloseSession(session);
  Finish(MethodId::kCloseSession, session.id, status, start);
  return status;
}

void CommandRunner::Dispatch(SessionRef session, const v1::SessionRequest& request,
                             v1::SessionResponse* response) {
  response->set_request_id(request.request_id());
  const auto command_case = request.command_case();
  switch (command_case) {
    case v1::SessionRequest::kGetServerInfo:
      *response->mutable_server_info() = GetServerInfo();
      return;
    case v1::SessionRequest::kOpen: {
      const absl::Status status = absl::FailedPreconditionError(
          "`open` is only allowed as the Session stream's first message; this stream's session "
          "is already open");
      RecordRejected(MethodId::kOpenSession, status);
      SetCommandStatus(status, response);
      return;
    }
    case v1::SessionRequest::COMMAND_NOT_SET:
      SetCommandStatus(absl::InvalidArgumentError(
                           absl::StrCat("SessionRequest request_id=", request.request_id(),
                                        " has no command set (or one this server does not know)")),
                       response);
      return;
    default: break;
  }
  const size_t index = static_cast<size_t>(command_case);
  if (index >= kStreamTable.size() || kStreamTable[index] == nullptr) {
    SetCommandStatus(
        absl::UnimplementedError(absl::StrCat("SessionRequest command field ", index,
                                              " is not supported on the Session stream")),
        response);
    return;
  }
  kStreamTable[index](*this, session, request, response);
}

}  // namespace attnd::server::front
