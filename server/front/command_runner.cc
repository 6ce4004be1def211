#include "server/front/command_runner.h"

#include <spdlog/spdlog.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/core/ids.h"
#include "server/front/bounded_text.h"
#include "server/front/status_convert.h"

namespace attnd::server::front {
namespace {

using StreamHandler = void (*)(CommandRunner& runner, std::string_view session_id,
                               const v1::SessionRequest& request, v1::SessionResponse* response);

// Lines of ReportSuppressedFailures beyond which the rest are summed up in one.
constexpr size_t kMaxSuppressedReportLines = 10;

void SetError(const absl::Status& status, v1::SessionResponse* response) {
  response->set_code(static_cast<int32_t>(status.code()));
  response->set_message(StatusMessageForClient(status));
}

// The stream side of one table entry: unpack the oneof, execute, pack the oneof.
template <const auto& command>
void RunFromStream(CommandRunner& runner, std::string_view session_id,
                   const v1::SessionRequest& request, v1::SessionResponse* response) {
  auto result = runner.Execute(command, session_id, (request.*command.stream_request)());
  if (result.ok()) {
    *(response->*command.stream_response)() = *std::move(result);
  } else {
    SetError(result.status(), response);
  }
}

// Field numbers of SessionRequest.command run from 2 (open) to 19 (get_completion_event).
constexpr size_t kStreamTableSize = v1::SessionRequest::kGetCompletionEvent + 1;
using StreamTable = std::array<StreamHandler, kStreamTableSize>;

template <const auto& command>
constexpr void Register(StreamTable& table) {
  table[command.stream_case] = &RunFromStream<command>;
}

constexpr StreamTable kStreamTable = [] {
  StreamTable table{};
  Register<commands::kCreatePool>(table);
  Register<commands::kAttachPool>(table);
  Register<commands::kDescribePool>(table);
  Register<commands::kDeletePool>(table);
  Register<commands::kAllocatePages>(table);
  Register<commands::kFreePages>(table);
  Register<commands::kForkPages>(table);
  Register<commands::kRegisterBuffer>(table);
  Register<commands::kUnregisterBuffer>(table);
  Register<commands::kCreatePlan>(table);
  Register<commands::kDeletePlan>(table);
  Register<commands::kAppendKv>(table);
  Register<commands::kRun>(table);
  Register<commands::kRegisterEvent>(table);
  Register<commands::kUnregisterEvent>(table);
  Register<commands::kGetCompletionEvent>(table);
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
  return absl::ResourceExhaustedError(absl::StrCat(
      "the ", std::string(MethodName(id)), " response is ", bytes, " bytes, over --max_message_bytes=",
      max_response_bytes_,
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

void CommandRunner::Dispatch(std::string_view session_id, const v1::SessionRequest& request,
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
      SetError(status, response);
      return;
    }
    case v1::SessionRequest::COMMAND_NOT_SET:
      SetError(absl::InvalidArgumentError(absl::StrCat(
                   "SessionRequest request_id=", request.request_id(),
                   " has no command set (or one this server does not know)")),
               response);
      return;
    default:
      break;
  }
  const size_t index = static_cast<size_t>(command_case);
  if (index >= kStreamTable.size() || kStreamTable[index] == nullptr) {
    SetError(absl::UnimplementedError(absl::StrCat("SessionRequest command field ", index,
                                                   " is not supported on the Session stream")),
             response);
    return;
  }
  kStreamTable[index](*this, session_id, request, response);
}

}  // namespace attnd::server::front
