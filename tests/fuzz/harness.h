// Fuzz harnesses of attnd's input checks, shared by the libFuzzer entry points (fuzz_*.cc, built
// with clang -fsanitize=fuzzer) and the regression test (fuzz_regression_test.cc, built in every
// build), which replays the generated seeds and every file under tests/fuzz/regressions/.
//
// Each harness returns normally for any input; a broken invariant calls FuzzCheckFailed, which
// prints what broke and aborts, so libFuzzer records a crash and the regression test dies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace attnd::fuzz {

// Arbitrary bytes parsed as a v1::SessionRequest (any command) and run through the front's
// CommandRunner::Dispatch into a Core over the CPU backend, in a fresh session that is attached
// to a shared pool and holds 3 pages and a decode plan. Ids of length <= 1 in the request are
// replaced by the real pool / plan ids, so the fuzzer reaches the checks behind the lookups.
// Invariants: the command answers (never crashes); after the session closes, the shared pool has
// every page free again and no plan or buffer is left.
void RunCoreCommand(const uint8_t* data, size_t size);

// Arbitrary bytes as a program of page-allocator operations (allocate, release, fork between two
// holders) and CreatePlanRequests validated against a pool geometry. Invariants: refcounts equal
// the ledgers' sums, the free list holds exactly the pages at refcount 0, and an accepted plan
// only names in-range pages with consistent CSR offsets and lengths.
void RunPageTable(const uint8_t* data, size_t size);

// Valid inputs for each harness, written by a small generator (seeds of the corpus).
std::vector<std::string> CoreCommandSeeds();
std::vector<std::string> PageTableSeeds();

[[noreturn]] void FuzzCheckFailed(const char* what, const std::string& detail);

}  // namespace attnd::fuzz
