// EXPECT_STATUS(expr, CODE, matchers...): `expr` (an absl::Status) has code absl::StatusCode::CODE
// and a message that every matcher accepts, e.g.
//   EXPECT_STATUS(core->Run(id, request), kInvalidArgument, HasSubstr("layer=40"));
#pragma once

#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#define EXPECT_STATUS(expr, code_, ...)                                                   \
  do {                                                                                    \
    const absl::Status _s = (expr);                                                       \
    EXPECT_EQ(_s.code(), absl::StatusCode::code_) << _s;                                  \
    EXPECT_THAT(std::string(_s.message()), ::testing::AllOf(__VA_ARGS__)) << _s;          \
  } while (0)
