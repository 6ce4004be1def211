// The bidirectional Session stream: the first message must be `open`, which opens a session bound
// to the stream (SessionBinding::kStream); every later SessionRequest is run through the same
// command table as the unary calls and answered in order by a SessionResponse carrying the same
// request_id, code and message. A failed command is answered and the stream goes on. However the
// stream ends (client half-close, cancellation, crash, server shutdown), its session is closed,
// which releases every page, buffer and plan it held.
//
// The stream carries raw bytes and this class parses them: a message that is not a
// SessionRequest ends the stream with INVALID_ARGUMENT saying so. (With gRPC's typed stream, a
// message that fails to parse makes Read() return false just like the client's half-close, and
// the stream ended OK without a word.)
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/sync_stream.h>

#include "attnd/v1/attnd.pb.h"
#include "server/front/command_runner.h"
#include "server/front/metrics.h"
#include "server/front/stream_registry.h"

namespace attnd::server::front {

class SessionStream {
 public:
  // `runner`, `metrics` and `streams` must outlive this object.
  SessionStream(CommandRunner& runner, Metrics& metrics, StreamRegistry& streams)
      : runner_(runner), metrics_(metrics), streams_(streams) {}

  // Serves one stream of serialized SessionRequests / SessionResponses until it ends. Ends with
  // FAILED_PRECONDITION when the first message is not `open` (naming what came instead),
  // INVALID_ARGUMENT for a message that does not parse, with the core's status when opening
  // fails, UNAVAILABLE when the daemon shuts down (StreamRegistry::CloseAll), else OK (or
  // CANCELLED when the client went away).
  // `owner`: the identity of the stream's client (owns the session).
  grpc::Status Serve(grpc::ServerContext& context,
                     grpc::ServerReaderWriterInterface<grpc::ByteBuffer, grpc::ByteBuffer>& stream,
                     const Identity& owner = {});

 private:
  CommandRunner& runner_;
  Metrics& metrics_;
  StreamRegistry& streams_;
};

}  // namespace attnd::server::front
