// Options of the CUDA backend's planning (split-KV decode schedule, prefill tiling). Plain structs
// without CUDA types, so that the planning layer (kernels/cuda/planning) and its CPU tests can use
// them; cuda_launch.h and cuda_prefill.h re-export them with the launchers.
#pragma once

#include <cstdint>

namespace attnd::kernels::cuda {

// How PrepareDecode cuts long sequences into chunks (split-KV). Defaults fit H100/H200.
struct DecodeScheduleOptions {
  // SMs to fill; 0 = read from the current device.
  int32_t num_sms = 0;
  // Resident CTAs per SM assumed when sizing the grid; 0 = the decode kernel's occupancy.
  int32_t ctas_per_sm = 0;
  // Grid size that split-KV aims at, in waves of num_sms * ctas_per_sm CTAs (the benchmark
  // sweeps it; 1 = every CTA resident at once).
  float waves = 1.f;
  // Chunks are at least this many tokens (splitting shorter pieces costs more in merging than
  // it gains in parallelism).
  int32_t min_chunk_tokens = 256;
  // > 0: every request is cut into chunks of exactly this many tokens (tests of the merge
  // path); 0 = automatic.
  int32_t fixed_chunk_tokens = 0;
  // false: never split (one CTA per request and KV head group).
  bool allow_split = true;
  // Load balancing (planning/decode_schedule.h) when the batch already fills `waves` waves:
  // the requests longer than an even share of the work (total tokens / resident CTAs) are cut
  // into chunks of about that share, and items run longest first, so that one long request
  // among short ones does not leave SMs idle at the end. false: only an under-filled batch
  // splits, items in request order (the rule before balancing; benchmarks compare both).
  bool balance = true;
  // The fixed cost of one CTA (prologue, epilogue, merge row) in tokens of K/V streamed, used by
  // the balancing estimate; 64 is ~2 us of one CTA's share of the H200's bandwidth at head_dim
  // 128 in fp16.
  int32_t cta_overhead_tokens = 64;
  // Which kernel: automatic (tensor cores for GQA groups >= 4 at head_dim <= 128, CUDA cores
  // otherwise), or forced (tests and benchmarks compare both).
  enum class Kernel : int32_t { kAuto = 0, kCudaCores = 1, kTensorCores = 2 };
  Kernel kernel = Kernel::kAuto;
};

// How PreparePrefill tiles the query rows. The tile is a property of the plan (its work items
// are CtaRows(tile) packed rows each); runs follow it.
struct PrefillScheduleOptions {
  // kAuto: on an sm_90 device (H100/H200) at head_dim 64 and 128, kHopper (the warp-specialized
  // wgmma kernel); else the measured best FA2-class tile (kWide64 at head_dim 128, H200
  // 2026-11-21, see docs/prefill-notes.md; kDefault elsewhere). The wide tiles exist at head_dim
  // 128 only and kHopper at 64 and 128 on sm_90; asked for elsewhere they resolve as kAuto.
  enum class Tile : int32_t {
    kAuto = 0,
    kDefault = 1,
    kWide = 2,
    kWide3 = 3,
    kWide64 = 4,
    kHopper = 5
  };
  Tile tile = Tile::kAuto;
  // Split-KV (short query rows on long K/V; planning/prefill_tiling.h): when the unsplit grid
  // does not fill `waves` waves of num_sms * ctas_per_sm CTAs, the K/V of every request is cut
  // into chunks (the smallest multiple of the tile's keys, >= min_chunk_tokens, whose grid still
  // fits) and the partial states are merged. num_sms 0: the current device's; ctas_per_sm 0: 2
  // (the prefill kernels' occupancy at head_dim 128: two CTAs of ~100 KB shared memory per SM).
  int32_t num_sms = 0;
  int32_t ctas_per_sm = 0;
  float waves = 1.f;
  int32_t min_chunk_tokens = 512;
  // > 0: every request longer than this is cut into chunks of this many keys (rounded up to the
  // tile's; tests of the merge path); 0 = automatic.
  int32_t fixed_chunk_tokens = 0;
  // false: never split.
  bool allow_split = true;
  // The plan's runs carry a custom mask (AttentionOptions::custom_mask; CudaPlan sets it for a
  // plan with one): its tile is one whose kernel applies masks, kHopper on sm_90 at head_dim 64
  // and 128, else kDefault (a wide tile asked for resolves as kDefault). Runs of a plan prepared
  // without it refuse a mask.
  bool custom_mask = false;
};

}  // namespace attnd::kernels::cuda
