// Umbrella header of the attnd C++ client library.
#pragma once

#include "attnd/client/client.h"          // IWYU pragma: export
#include "attnd/client/peer_link.h"       // IWYU pragma: export
#include "attnd/client/session.h"         // IWYU pragma: export
#include "attnd/client/session_api.h"     // IWYU pragma: export
#include "attnd/client/shared_memory.h"   // IWYU pragma: export
#include "attnd/client/status.h"          // IWYU pragma: export
#include "attnd/client/tensor.h"          // IWYU pragma: export
#include "attnd/client/unary_session.h"   // IWYU pragma: export
