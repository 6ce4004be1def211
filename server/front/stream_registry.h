// The live Session streams, so that shutdown does not wait out its whole drain deadline for
// engines that keep a stream open forever. CloseAll() ends every stream: one blocked waiting
// for its next command is cancelled at once; one running a command answers it and then ends.
// Streams that try to register after CloseAll() are refused.
#pragma once

#include <grpcpp/server_context.h>

#include <memory>
#include <mutex>
#include <unordered_set>

namespace attnd::server::front {

class StreamRegistry {
 public:
  class Entry;

  // Unregisters on destruction. Null when the registry is closed (shutting down).
  class Handle {
   public:
    Handle(StreamRegistry* registry, std::shared_ptr<Entry> entry)
        : registry_(registry), entry_(std::move(entry)) {}
    ~Handle();
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;

    // Around each command: BeginCommand is false when the stream must end instead of running
    // it; EndCommand is false when the stream must end after answering it.
    bool BeginCommand();
    bool EndCommand();
    bool closing() const;

   private:
    StreamRegistry* registry_;
    std::shared_ptr<Entry> entry_;
  };

  std::unique_ptr<Handle> Register(grpc::ServerContext* context);
  void CloseAll();
  size_t size() const;

 private:
  mutable std::mutex mutex_;
  bool closed_ = false;
  std::unordered_set<std::shared_ptr<Entry>> entries_;
};

}  // namespace attnd::server::front
