// The prefill kernel's epilogue: o / d and the LSE of each row; O staged in this warp's own rows
// of the Q tile (free once the mainloop is done), then written with 16-byte stores. A split-KV
// tile writes its chunk's partial state instead (o normalised, lse), for the merge pass.
#pragma once

#include <cstdint>

#include "blocks/ptx.cuh"
#include "blocks/softmax_state.cuh"
#include "blocks/vec.cuh"
#include "prefill/prefill_config.cuh"
#include "prefill/prefill_tile.cuh"

namespace attnd::kernels::cuda::internal {

// o_acc: this thread's accumulators ([kMmaQ][D / 8][4]); rows: their softmax states. q_smem:
// the Q tile, [kCtaRows][D] in the kernel's Q layout (Cfg::StagingOffset: element offset of
// (row, 16-byte chunk)), reused as staging: this warp writes and reads only its own rows, whose Q
// the caller's MMAs are done with. work: the tile's work unit (blockIdx.x unless the kernel is
// persistent).
template <class Cfg>
__device__ __forceinline__ void StorePrefillOutput(
    const PrefillParams& p, const PrefillTile& t,
    const float (&o_acc)[Cfg::kMmaQ][Cfg::kHeadDim / 8][4],
    const MmaRowsSoftmax (&rows)[Cfg::kMmaQ], typename Cfg::T* q_smem, int warp, int lane,
    int work) {
  using T = typename Cfg::T;
  constexpr int D = Cfg::kHeadDim;
  constexpr int MQ = Cfg::kMmaQ;
  constexpr int CPR = Cfg::kChunks;
  const int g = lane / 4;
  const int t4 = lane % 4;
  const int group = p.group;
  // Split-KV: the item's state rows, read again here rather than kept in registers through the
  // mainloop, which is at the register cap (volatile: a plain load would be merged with the
  // tile's first read of the item). A split tile writes its chunk's partial state through the
  // same staging as o: o normalised in the 16-bit type (as FlashInfer's split-KV prefill), lse in
  // fp32; a separate fp32 store path cost ptxas 56-60 bytes of spills in the wide64 kernels.
  const volatile PrefillItem& item = p.items[PrefillItemIndex<Cfg::kRope>(p, work)];
  const int state_base = item.state_base;
  const bool split = state_base >= 0;
  const int state0 = state_base + item.chunk;
  const int state_stride = item.num_chunks;
  // The output row of query row qi: o/lse row qo_begin + qi, or its state row.
  auto out_row = [&](int qi) { return split ? state0 + qi * state_stride : t.qo_begin + qi; };
#pragma unroll
  for (int mq = 0; mq < MQ; ++mq) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = warp * Cfg::kWarpRows + mq * 16 + g + 8 * h;
      const int pk = t.packed_start + r;
      // Packed row pk is query row pk / group of query head kv_head * group + pk % group (GQA
      // packing; in range also for the padding rows past packed_end, which store nothing). Its
      // sink (if any) is folded in here for an unsplit row, by the merge for a split one.
      const int head = t.kv_head * group + pk % group;
      const RowFinal fin =
          FinalizeRow(split ? nullptr : p.variant.sinks, head, rows[mq].m[h], rows[mq].RowSum(h));
      const float inv = fin.inv;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<uint32_t*>(q_smem + Cfg::StagingOffset(r, j) + 2 * t4) =
            Pack2<T>(o_acc[mq][j][2 * h] * inv, o_acc[mq][j][2 * h + 1] * inv);
      }
      float* lse = split ? p.partial_lse : p.lse;
      if (lse != nullptr && t4 == 0 && pk < t.packed_end) {
        lse[static_cast<int64_t>(out_row(pk / group)) * p.num_qo_heads + head] = fin.lse;
      }
    }
  }
  T* o_g = static_cast<T*>(split ? p.partial_o : p.o);
  __syncwarp();
  for (int idx = lane; idx < Cfg::kWarpRows * CPR; idx += 32) {
    const int r = warp * Cfg::kWarpRows + idx / CPR;
    const int c = idx % CPR;
    const int pk = t.packed_start + r;
    if (pk < t.packed_end) {
      const int qi = pk / group;
      const int head = t.kv_head * group + pk % group;
      T* dst = o_g + (static_cast<int64_t>(out_row(qi)) * p.num_qo_heads + head) * D + c * 8;
      *reinterpret_cast<uint4*>(dst) =
          *reinterpret_cast<const uint4*>(q_smem + Cfg::StagingOffset(r, c));
    }
  }
}

}  // namespace attnd::kernels::cuda::internal
