// The one command list (attnd/v1/session_commands.h) against the proto it lists: every oneof case
// of SessionRequest and every rpc of attnd.v1.Attnd has exactly one entry (or is one of the three
// session-less calls), and the front's table derived from it points each command at its own
// oneof members and metrics name.
#include "server/front/command_table.h"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "attnd/v1/attnd.pb.h"
#include "attnd/v1/session_commands.h"

namespace attnd::server::front {
namespace {

struct Entry {
  std::string name;
  std::string field;
};

std::vector<Entry> ListedCommands() {
  std::vector<Entry> entries;
#define ATTND_TEST_ENTRY(Name, field) entries.push_back({#Name, #field});
  ATTND_SESSION_COMMANDS(ATTND_TEST_ENTRY)
#undef ATTND_TEST_ENTRY
  return entries;
}

// The calls that have their own shapes and are not in the list, by stream field and rpc.
const std::set<std::string> kSessionlessStreamFields = {"open", "get_server_info"};
const std::set<std::string> kSessionlessRpcs = {"GetServerInfo", "OpenSession", "CloseSession",
                                                "Session"};

TEST(CommandTableTest, EverySessionRequestCommandHasOneEntry) {
  const auto* oneof = v1::SessionRequest::descriptor()->FindOneofByName("command");
  ASSERT_NE(oneof, nullptr);
  std::multiset<std::string> listed;
  for (const Entry& e : ListedCommands()) listed.insert(e.field);
  std::set<std::string> in_proto;
  for (int i = 0; i < oneof->field_count(); ++i) {
    const std::string field(oneof->field(i)->name());
    in_proto.insert(field);
    if (kSessionlessStreamFields.count(field) > 0) {
      EXPECT_EQ(listed.count(field), 0u) << field << " is session-less and must not be listed";
    } else {
      EXPECT_EQ(listed.count(field), 1u) << "SessionRequest." << field
                                         << " needs exactly one ATTND_SESSION_COMMANDS entry";
    }
  }
  for (const std::string& field : listed) {
    EXPECT_EQ(in_proto.count(field), 1u) << field << " is listed but not a SessionRequest command";
  }
}

TEST(CommandTableTest, EveryRpcIsListedOrSessionless) {
  const auto* service = v1::SessionRequest::descriptor()->file()->FindServiceByName("Attnd");
  ASSERT_NE(service, nullptr);
  std::multiset<std::string> listed;
  for (const Entry& e : ListedCommands()) listed.insert(e.name);
  std::set<std::string> rpcs;
  for (int i = 0; i < service->method_count(); ++i) {
    const std::string name(service->method(i)->name());
    rpcs.insert(name);
    if (kSessionlessRpcs.count(name) > 0) continue;
    EXPECT_EQ(listed.count(name), 1u) << "rpc " << name << " needs exactly one entry";
    // Its messages are Name##Request / Name##Response, as the derived code assumes.
    EXPECT_EQ(std::string(service->method(i)->input_type()->name()), name + "Request");
    EXPECT_EQ(std::string(service->method(i)->output_type()->name()), name + "Response");
  }
  for (const std::string& name : listed) EXPECT_EQ(rpcs.count(name), 1u) << name;
}

TEST(CommandTableTest, ResultMembersHaveTheCommandsFieldNames) {
  const auto* result = v1::SessionResponse::descriptor()->FindOneofByName("result");
  ASSERT_NE(result, nullptr);
  std::set<std::string> members;
  for (int i = 0; i < result->field_count(); ++i) {
    members.insert(std::string(result->field(i)->name()));
  }
  for (const Entry& e : ListedCommands()) EXPECT_EQ(members.count(e.field), 1u) << e.field;
}

TEST(CommandTableTest, MethodNamesAreUniqueAndNamed) {
  std::set<std::string> names;
  for (int i = 0; i < static_cast<int>(MethodId::kCount); ++i) {
    const std::string name(MethodName(static_cast<MethodId>(i)));
    EXPECT_NE(name, "Unknown") << "method id " << i;
    EXPECT_TRUE(names.insert(name).second) << name << " twice";
  }
  EXPECT_EQ(names.size(), ListedCommands().size() + 3);  // + GetServerInfo, Open/CloseSession
  EXPECT_EQ(MethodName(MethodId::kRun), "Run");
  EXPECT_EQ(MethodName(MethodId::kGetServerInfo), "GetServerInfo");
}

TEST(CommandTableTest, TableEntriesPointAtTheirOwnOneofMembers) {
  // The stream case of each entry is the SessionRequest member of the same field name.
  const auto* oneof = v1::SessionRequest::descriptor()->FindOneofByName("command");
  ASSERT_NE(oneof, nullptr);
#define ATTND_TEST_CASE(Name, field)                                                   \
  {                                                                                    \
    const auto& command = commands::k##Name;                                           \
    EXPECT_EQ(MethodName(command.id), #Name);                                          \
    const auto* member = v1::SessionRequest::descriptor()->FindFieldByName(#field);    \
    ASSERT_NE(member, nullptr) << #field;                                              \
    EXPECT_EQ(static_cast<int>(command.stream_case), member->number()) << #Name;       \
    v1::SessionRequest request;                                                        \
    request.mutable_##field();                                                         \
    EXPECT_EQ(request.command_case(), command.stream_case) << #Name;                   \
    v1::SessionResponse response;                                                      \
    (response.*command.stream_response)();                                            \
    EXPECT_EQ(response.result_case(), v1::SessionResponse::k##Name) << #Name;          \
  }
  ATTND_SESSION_COMMANDS(ATTND_TEST_CASE)
#undef ATTND_TEST_CASE
}

}  // namespace
}  // namespace attnd::server::front
