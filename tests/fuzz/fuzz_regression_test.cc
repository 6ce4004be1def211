// Replays the fuzz seeds (generated) and every input under tests/fuzz/regressions/<harness>/
// (inputs that once broke an invariant or crashed) through the harnesses. A regression dies
// with the invariant's message.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/fuzz/harness.h"

namespace attnd::fuzz {
namespace {

std::vector<std::string> FilesUnder(const std::string& harness) {
  std::vector<std::string> inputs;
  const std::filesystem::path dir =
      std::filesystem::path(ATTND_FUZZ_REGRESSIONS_DIR) / harness;
  if (!std::filesystem::exists(dir)) return inputs;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (!entry.is_regular_file() || entry.path().filename().string().front() == '.') continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    inputs.push_back(buffer.str());
  }
  return inputs;
}

void Replay(void (*harness)(const uint8_t*, size_t), const std::vector<std::string>& inputs) {
  for (const std::string& input : inputs) {
    harness(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  }
}

TEST(FuzzRegressionTest, CoreCommandSeedsAndRegressions) {
  const auto seeds = CoreCommandSeeds();
  ASSERT_GE(seeds.size(), 10u);
  Replay(RunCoreCommand, seeds);
  Replay(RunCoreCommand, FilesUnder("core_commands"));
  // Truncations and bit flips of every seed: cheap extra coverage in every build.
  for (const std::string& seed : seeds) {
    for (size_t cut = 0; cut < seed.size(); cut += 7) {
      const std::string prefix = seed.substr(0, cut);
      RunCoreCommand(reinterpret_cast<const uint8_t*>(prefix.data()), prefix.size());
    }
    std::string flipped = seed;
    for (size_t i = 0; i < flipped.size(); i += 5) flipped[i] ^= 0x5a;
    RunCoreCommand(reinterpret_cast<const uint8_t*>(flipped.data()), flipped.size());
  }
}

TEST(FuzzRegressionTest, PageTableSeedsAndRegressions) {
  Replay(RunPageTable, PageTableSeeds());
  Replay(RunPageTable, FilesUnder("page_table"));
  // Every 2-byte geometry with a fixed op tail.
  for (int a = 0; a < 256; a += 17) {
    for (int b = 0; b < 256; b += 13) {
      const std::string input = std::string{static_cast<char>(a), static_cast<char>(b)} +
                                std::string("\x00\x00\x05\x08\x01\x00\x00\x00\x02", 9);
      RunPageTable(reinterpret_cast<const uint8_t*>(input.data()), input.size());
    }
  }
}

}  // namespace
}  // namespace attnd::fuzz
