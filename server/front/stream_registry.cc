#include "server/front/stream_registry.h"

namespace attnd::server::front {

class StreamRegistry::Entry {
 public:
  explicit Entry(grpc::ServerContext* context) : context_(context) {}

  bool BeginCommand() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closing_) return false;
    busy_ = true;
    return true;
  }
  bool EndCommand() {
    std::lock_guard<std::mutex> lock(mutex_);
    busy_ = false;
    return !closing_;
  }
  bool closing() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return closing_;
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
    // Idle: the handler sits in Read(); cancelling the call is the only way to wake it.
    if (!busy_) context_->TryCancel();
  }

 private:
  grpc::ServerContext* const context_;
  mutable std::mutex mutex_;
  bool busy_ = false;
  bool closing_ = false;
};

StreamRegistry::Handle::~Handle() {
  std::lock_guard<std::mutex> lock(registry_->mutex_);
  registry_->entries_.erase(entry_);
}

bool StreamRegistry::Handle::BeginCommand() { return entry_->BeginCommand(); }
bool StreamRegistry::Handle::EndCommand() { return entry_->EndCommand(); }
bool StreamRegistry::Handle::closing() const { return entry_->closing(); }

std::unique_ptr<StreamRegistry::Handle> StreamRegistry::Register(grpc::ServerContext* context) {
  auto entry = std::make_shared<Entry>(context);
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_) return nullptr;
  entries_.insert(entry);
  return std::make_unique<Handle>(this, std::move(entry));
}

void StreamRegistry::CloseAll() {
  std::lock_guard<std::mutex> lock(mutex_);
  closed_ = true;
  for (const auto& entry : entries_) entry->Close();
}

size_t StreamRegistry::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return entries_.size();
}

}  // namespace attnd::server::front
