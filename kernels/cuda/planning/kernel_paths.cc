// Kernel paths in words (kernel_paths.h).
#include "planning/kernel_paths.h"

#include "absl/strings/str_cat.h"
#include "planning/decode_schedule.h"

namespace attnd::kernels::cuda::internal {

const char* TileVariantName(TileVariant variant) {
  switch (variant) {
    case TileVariant::kHopper: return "sm90";
    case TileVariant::kWide64: return "fa2-wide64";
    case TileVariant::kWide: return "fa2-wide";
    case TileVariant::kWide3: return "fa2-wide3";
    case TileVariant::kDefault: break;
  }
  return "fa2-default";
}

std::vector<std::string> DescribeKernelPaths(std::span<const int32_t> head_dims, bool sm90,
                                             bool (*tc_built)(int32_t head_dim)) {
  using Tile = PrefillScheduleOptions::Tile;
  std::vector<std::string> lines;
  for (const int32_t d : head_dims) {
    const TileVariant plain = ResolvePrefillTile(d, Tile::kAuto, sm90);
    const TileVariant masked = ResolvePrefillTile(d, Tile::kAuto, sm90, /*custom_mask=*/true);
    lines.push_back(absl::StrCat("prefill/append head_dim ", d, ": ", TileVariantName(plain),
                                 "; with a custom mask: ", TileVariantName(masked),
                                 plain == TileVariant::kHopper ? " (its masked build)" : "",
                                 "; with RoPE on the fly: fa2-rope (default tile)"));
    std::vector<int32_t> tc_groups;
    for (int32_t group = 1; group <= 32; ++group) {
      if (UseTensorCoreDecode(DecodeScheduleOptions::Kernel::kAuto, group, tc_built(d))) {
        tc_groups.push_back(group);
      }
    }
    std::string decode = absl::StrCat("decode head_dim ", d, ": ");
    if (tc_groups.empty()) {
      absl::StrAppend(&decode, "CUDA cores at every GQA group");
    } else {
      absl::StrAppend(&decode, "tensor cores at GQA groups >= ", tc_groups.front(),
                      ", CUDA cores below");
    }
    lines.push_back(std::move(decode));
  }
  lines.push_back(
      "K/V types: decode reads q's type or fp8 e4m3 / e5m2 on the kernels above (fp8 converted "
      "per stage, scales per KV head), the other 16-bit type on CUDA cores; prefill, append and "
      "cascade plans read q's type only");
  return lines;
}

}  // namespace attnd::kernels::cuda::internal
