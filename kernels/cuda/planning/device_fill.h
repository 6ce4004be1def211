// What a split-KV schedule (decode_schedule.h, prefill_tiling.h) needs to know about the device:
// SMs and resident CTAs per SM of the chosen kernel. The kernel families resolve it on the device
// (decode.cc, prefill.cu); the CPU tests make it up.
#pragma once

#include <cstdint>

namespace attnd::kernels::cuda::internal {

struct DeviceFill {
  int32_t num_sms = 1;
  int32_t ctas_per_sm = 1;
};

}  // namespace attnd::kernels::cuda::internal
