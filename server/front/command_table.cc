#include "server/front/command_table.h"

namespace attnd::server::front {

std::string_view MethodName(MethodId id) {
  switch (id) {
    case MethodId::kGetServerInfo: return "GetServerInfo";
    case MethodId::kOpenSession: return "OpenSession";
    case MethodId::kCloseSession: return "CloseSession";
    case MethodId::kCreatePool: return "CreatePool";
    case MethodId::kAttachPool: return "AttachPool";
    case MethodId::kDescribePool: return "DescribePool";
    case MethodId::kDeletePool: return "DeletePool";
    case MethodId::kAllocatePages: return "AllocatePages";
    case MethodId::kFreePages: return "FreePages";
    case MethodId::kForkPages: return "ForkPages";
    case MethodId::kRegisterBuffer: return "RegisterBuffer";
    case MethodId::kUnregisterBuffer: return "UnregisterBuffer";
    case MethodId::kCreatePlan: return "CreatePlan";
    case MethodId::kDeletePlan: return "DeletePlan";
    case MethodId::kAppendKv: return "AppendKv";
    case MethodId::kRun: return "Run";
    case MethodId::kRegisterEvent: return "RegisterEvent";
    case MethodId::kUnregisterEvent: return "UnregisterEvent";
    case MethodId::kGetCompletionEvent: return "GetCompletionEvent";
    case MethodId::kCount: break;
  }
  return "Unknown";
}

}  // namespace attnd::server::front
