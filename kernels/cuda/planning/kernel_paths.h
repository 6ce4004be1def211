// Which CUDA kernel each shape takes, in words (ServerInfo.kernel_paths): derived from the
// planner's own choices (ResolvePrefillTile, UseTensorCoreDecode), so the description cannot
// drift from the dispatch. Host only, no CUDA calls.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "planning/prefill_tiling.h"

namespace attnd::kernels::cuda::internal {

// The kernel a prefill plan of `variant` runs ("sm90", "fa2-wide64", ...; PrefillKernelName).
const char* TileVariantName(TileVariant variant);

// One line per (family, head dim) for the built head dims on a device that is (sm90) or is not
// an sm_90 device; tc_built(head_dim): whether the tensor-core decode kernel is built there.
std::vector<std::string> DescribeKernelPaths(std::span<const int32_t> head_dims, bool sm90,
                                             bool (*tc_built)(int32_t head_dim));

}  // namespace attnd::kernels::cuda::internal
