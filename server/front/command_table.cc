#include "server/front/command_table.h"

namespace attnd::server::front {

std::string_view MethodName(MethodId id) {
  switch (id) {
    case MethodId::kGetServerInfo: return "GetServerInfo";
    case MethodId::kOpenSession: return "OpenSession";
    case MethodId::kCloseSession: return "CloseSession";
#define ATTND_METHOD_NAME(Name, field) \
  case MethodId::k##Name: return #Name;
      ATTND_SESSION_COMMANDS(ATTND_METHOD_NAME)
#undef ATTND_METHOD_NAME
    case MethodId::kCount: break;
  }
  return "Unknown";
}

}  // namespace attnd::server::front
