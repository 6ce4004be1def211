// Writes the harnesses' seed inputs (valid requests, harness.h) into DIR/core_commands/ and
// DIR/page_table/, the starting corpus of the fuzz runs in scripts/test-reliability.sh.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/fuzz/harness.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  auto write_all = [&](const char* name, const std::vector<std::string>& seeds) {
    std::filesystem::create_directories(dir / name);
    for (size_t i = 0; i < seeds.size(); ++i) {
      std::ofstream(dir / name / ("seed-" + std::to_string(i)), std::ios::binary) << seeds[i];
    }
    std::printf("%s: %zu seeds\n", name, seeds.size());
  };
  write_all("core_commands", attnd::fuzz::CoreCommandSeeds());
  write_all("page_table", attnd::fuzz::PageTableSeeds());
  return 0;
}
