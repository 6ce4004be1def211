#include "server/front/grpc_reflection.h"

#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>

#include <memory>
#include <vector>

#ifdef ATTND_WITH_GRPC_REFLECTION
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#endif

namespace attnd::server::front {
namespace {

#ifdef ATTND_WITH_GRPC_REFLECTION
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    std::erase_if(*plugins, [](const std::unique_ptr<grpc::ServerBuilderPlugin>& plugin) {
      return dynamic_cast<grpc::reflection::ProtoServerReflectionPlugin*>(plugin.get()) != nullptr;
    });
  }
};
#endif

}  // namespace

absl::Status ConfigureReflection(grpc::ServerBuilder& builder, bool enabled) {
#ifdef ATTND_WITH_GRPC_REFLECTION
  if (enabled) {
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  } else {
    builder.SetOption(std::make_unique<WithoutReflection>());
  }
  return absl::OkStatus();
#else
  (void)builder;
  if (enabled) {
    return absl::FailedPreconditionError(
        "--grpc_reflection: this attnd was built without gRPC reflection (grpc++_reflection)");
  }
  return absl::OkStatus();
#endif
}

}  // namespace attnd::server::front
