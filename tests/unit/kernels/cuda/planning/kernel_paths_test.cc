// The kernel paths ServerInfo reports (planning/kernel_paths.h) follow the planner's choices.
#include "planning/kernel_paths.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnd::kernels::cuda::internal {
namespace {

using ::testing::ElementsAre;

bool TcUpTo128(int32_t head_dim) { return head_dim <= 128; }
bool NoTc(int32_t) { return false; }

TEST(KernelPaths, Sm90TakesTheWgmmaKernelAtHeadDim128WithItsMaskedBuild) {
  const std::vector<int32_t> dims = {128, 256};
  EXPECT_THAT(
      DescribeKernelPaths(dims, /*sm90=*/true, &TcUpTo128),
      ElementsAre("prefill/append head_dim 128: sm90; with a custom mask: sm90 (its masked "
                  "build); with RoPE on the fly: fa2-rope (default tile)",
                  "decode head_dim 128: tensor cores at GQA groups >= 4, CUDA cores below",
                  "prefill/append head_dim 256: fa2-default; with a custom mask: fa2-default; "
                  "with RoPE on the fly: fa2-rope (default tile)",
                  "decode head_dim 256: CUDA cores at every GQA group",
                  ::testing::HasSubstr("K/V types: decode reads q's type or fp8")));
}

TEST(KernelPaths, ElsewhereTheWideTileWhoseMaskedPlansTakeTheDefaultOne) {
  const std::vector<int32_t> dims = {128};
  const std::vector<std::string> lines = DescribeKernelPaths(dims, /*sm90=*/false, &NoTc);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0],
            "prefill/append head_dim 128: fa2-wide64; with a custom mask: fa2-default; with "
            "RoPE on the fly: fa2-rope (default tile)");
  EXPECT_EQ(lines[1], "decode head_dim 128: CUDA cores at every GQA group");
  EXPECT_STREQ(TileVariantName(TileVariant::kWide3), "fa2-wide3");
}

}  // namespace
}  // namespace attnd::kernels::cuda::internal
