// Batch decode attention over the paged KV cache (CUDA cores), with split-KV.
//
// One CTA = one work item (request b, a chunk [start, end) of its kv positions) x one KV head x
// a tile of TILE query heads of that KV head, so every K/V byte of the chunk is read from device
// memory once for all of the tile's query heads (GQA/MQA).
//
// Threads are (tx, ty, tz), tx fastest:
//   tx < BDX = D/8: owns head dims [8*tx, 8*tx + 8) (one 16-byte vector of a K/V row);
//   ty < TILE:      the query head of the tile;
//   tz < BDZ:       a slice of the tokens of each pipeline stage.
// K/V rows of the chunk stream through shared memory in STAGES stages of TPS tokens each
// (cp.async, 16 bytes per copy, zero-filled past the end). Each (ty, tz) keeps an online-softmax
// state (m, d in base 2; o[8] per tx), merged across tz at the end. A request cut into several
// chunks writes per-chunk partial states (o normalised, fp32; lse) that a merge kernel combines.
// With RoPE (kRope), K rows are rotated once per stage (not once per query head) into an fp32
// copy of the stage's K, and q is rotated in fp32 registers: no rotated value is rounded to the
// 16-bit type (NUMERICS.md). Building blocks: the page walk (blocks/paged_kv.cuh), the softmax
// state and its merge (blocks/softmax_state.cuh), logits and window (blocks/variant.cuh), RoPE
// (blocks/rope.cuh), the K/V element types (blocks/kv_convert.cuh).
//
// K/V may be stored in another type than q/o (Tkv: fp16, bf16, fp8 e4m3 / e5m2): every element
// is converted to fp32 where it is read. FP8 scales: K's multiplies q once (q . k8 ks = (q ks) .
// k8), V's multiplies o before the merge; both per KV head (the CTA's).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "blocks/kv_convert.cuh"
#include "blocks/paged_kv.cuh"
#include "blocks/ptx.cuh"
#include "blocks/rope.cuh"
#include "blocks/softmax_state.cuh"
#include "blocks/variant.cuh"
#include "blocks/vec.cuh"
#include "decode/decode_item.cuh"
#include "decode/decode_params.h"

namespace attnd::kernels::cuda::internal {

// kKvBytes: bytes of a stored K/V element (2, or 1 for fp8: twice the tokens per stage).
template <int D, int TILE, int kKvBytes = 2>
struct DecodeTraits {
  static_assert(D % 16 == 0 && D >= 64 && D <= 256, "head_dim 64..256, multiple of 16");
  static constexpr int kVec = 8;  // elements of a K/V row per thread (tx)
  static constexpr int kBdx = D / kVec;
  static constexpr int kBdy = TILE;
  static constexpr int kBdz = (kBdx * kBdy >= 128) ? 1 : 128 / (kBdx * kBdy);
  static constexpr int kThreads = kBdx * kBdy * kBdz;
  // Resident CTAs the register allocation must allow (~640 threads per SM: <= 102 registers).
  static constexpr int kMinBlocks = 640 / kThreads > 0 ? 640 / kThreads : 1;
  // ~8 KB of K+V per stage: 16 tokens at D = 128 (32 in fp8).
  static constexpr int kTokensTarget = 8192 / (2 * kKvBytes * D);
  static constexpr int kTokensPerZ = kTokensTarget / kBdz > 0 ? kTokensTarget / kBdz : 1;
  static constexpr int kTokensPerStage = kTokensPerZ * kBdz;
  static constexpr int kStages = 4;
  static constexpr int kSmemElems = kStages * 2 * kTokensPerStage * D;
  static_assert(kThreads % kBdx == 0 && 32 % kBdx == 0, "tx groups within a warp");
  // The cross-tz merge reuses the pipeline buffer: o [BDZ][BDY][D] and (m, d) [BDZ][BDY][2].
  static_assert((kBdz * kBdy * (D + 2)) * 4 <= kSmemElems * kKvBytes, "merge scratch fits");
};

template <typename T, typename Tkv, int D, int TILE, bool kRope>
__global__ void __launch_bounds__(DecodeTraits<D, TILE, sizeof(Tkv)>::kThreads,
                                  DecodeTraits<D, TILE, sizeof(Tkv)>::kMinBlocks)
    BatchDecodeKernel(const __grid_constant__ DecodeKernelParams p) {
  using Tr = DecodeTraits<D, TILE, sizeof(Tkv)>;
  constexpr int BDX = Tr::kBdx;
  constexpr int BDY = Tr::kBdy;
  constexpr int BDZ = Tr::kBdz;
  constexpr int NT = Tr::kThreads;
  constexpr int TZ = Tr::kTokensPerZ;
  constexpr int TPS = Tr::kTokensPerStage;
  constexpr int STAGES = Tr::kStages;
  constexpr int HALF_CH = BDX / 2;  // 16-byte vectors in half a head (RoPE pairs)

  __shared__ __align__(16) Tkv smem[Tr::kSmemElems];  // [STAGES][2 (K, V)][TPS][D]
  // kRope: the current stage's K rows, rotated, in fp32 ([TPS][D]).
  __shared__ __align__(16) float krot[kRope ? TPS * D : 4];

  const int tid = threadIdx.x;
  const int tx = tid % BDX;
  const int ty = (tid / BDX) % BDY;
  const int tz = tid / (BDX * BDY);

  const auto [item, kv_head, head_tile, live] = LocateDecodeCta(p);
  if (!live) return;  // uniform over the CTA, before any barrier
  const int b = item.request;
  const int head_in_group = head_tile * TILE + ty;
  const bool head_valid = head_in_group < p.group;
  const int qo_head = kv_head * p.group + head_in_group;

  const auto [page_begin, q_pos, start, end, rope_offset] = ResolveDecodeItem<kRope>(p, item);

  // ---- q: load, rotate (registers: 8 floats of one head) ----
  float q[8];
  {
    const T* q_row =
        static_cast<const T*>(p.q) + (static_cast<int64_t>(b) * p.num_qo_heads + qo_head) * D;
    uint4 raw = make_uint4(0, 0, 0, 0);
    if (head_valid) raw = *reinterpret_cast<const uint4*>(q_row + tx * 8);
    Vec8<T>::ToFloat(raw, q);
    if constexpr (kRope) {
      const int partner_tx = tx < HALF_CH ? tx + HALF_CH : tx - HALF_CH;
      uint4 praw = make_uint4(0, 0, 0, 0);
      if (head_valid) praw = *reinterpret_cast<const uint4*>(q_row + partner_tx * 8);
      float partner[8];
      Vec8<T>::ToFloat(praw, partner);
      const float sign = tx < HALF_CH ? -1.f : 1.f;  // x' = x cos -+ partner sin
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const RopeFreq f = p.variant.rope_freq[(tx % HALF_CH) * 8 + k];
        float c, s;
        RopeCosSin(q_pos + rope_offset, f, &c, &s);
        q[k] = q[k] * c + sign * partner[k] * s;
      }
    }
    if constexpr (kIsFp8<Tkv>) {
      const float ks = KvScale(p.kv.k_scale, kv_head);
#pragma unroll
      for (int k = 0; k < 8; ++k) q[k] *= ks;
    }
  }

  // RoPE frequencies of the K pairs this thread rotates in shared memory (pair chunk
  // tid % HALF_CH is the same for all of its items because NT % HALF_CH == 0).
  RopeFreq kfreq[8];
  if constexpr (kRope) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      kfreq[k] = p.variant.rope_freq[(tid % HALF_CH) * 8 + k];
    }
  }

  // ---- pipeline over the chunk ----
  const int n_tokens = max(end - start, 0);
  const int iters = (n_tokens + TPS - 1) / TPS;
  // K/V stages: [STAGES][2 (K, V)][TPS][D] in smem, slot `it % STAGES` for stage `it`.
  const Tkv* kv = static_cast<const Tkv*>(p.kv.data);
  const int64_t head_off = static_cast<int64_t>(kv_head) * p.kv.head_stride;
  using Stage = PagedKvStage<Tkv, D, TPS, NT, /*kSwizzle=*/false, /*kTokenMajor=*/true>;
  int pages[Stage::kLoads];  // page ids of the next stage to issue (fetched a stage ahead)
  auto fetch_pages = [&](int it) {
    Stage::Fetch(pages, p.kv, page_begin, start + it * TPS, end, tid);
  };
  auto load_stage = [&](int it, int slot) {
    Stage::Copy(smem + slot * 2 * TPS * D, pages, p.kv, kv, head_off, start + it * TPS, end, tid);
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    fetch_pages(s);
    if (s < iters) load_stage(s, s);
    CpAsyncCommit();
  }
  fetch_pages(STAGES - 1);

  SoftmaxState<8> st;  // this head's row over the chunk; o: dims tx * 8 .. + 7

  for (int it = 0; it < iters; ++it) {
    CpAsyncWait<STAGES - 2>();
    __syncthreads();  // stage `it` landed for every thread; stage it-1 is no longer read
    {
      const int next = it + STAGES - 1;
      if (next < iters) load_stage(next, next % STAGES);  // pages[] were fetched last iteration
      CpAsyncCommit();
      fetch_pages(next + 1);  // in flight while this stage is computed
    }
    const int slot = it % STAGES;
    const Tkv* sk = smem + (slot * 2 + 0) * TPS * D;
    const Tkv* sv = smem + (slot * 2 + 1) * TPS * D;
    const int stage_start = start + it * TPS;

    if constexpr (kRope) {  // rotate this stage's K rows into krot, once for all query heads
      for (int i = tid; i < TPS * HALF_CH; i += NT) {
        const int tok = i / HALF_CH;
        const int c = i % HALF_CH;
        const int t = stage_start + tok;
        if (t >= end) continue;  // its logit is masked below; krot keeps stale finite values
        float lo[8], hi[8];
        LoadKvAsFloat8(sk + tok * D + c * 8, lo);
        LoadKvAsFloat8(sk + tok * D + D / 2 + c * 8, hi);
        RotateHalfPairs8(lo, hi, t + rope_offset, kfreq);
        float4* lo_dst = reinterpret_cast<float4*>(krot + tok * D + c * 8);
        float4* hi_dst = reinterpret_cast<float4*>(krot + tok * D + D / 2 + c * 8);
        lo_dst[0] = make_float4(lo[0], lo[1], lo[2], lo[3]);
        lo_dst[1] = make_float4(lo[4], lo[5], lo[6], lo[7]);
        hi_dst[0] = make_float4(hi[0], hi[1], hi[2], hi[3]);
        hi_dst[1] = make_float4(hi[4], hi[5], hi[6], hi[7]);
      }
      __syncthreads();
    }

    // Logits of this thread's TZ tokens (full dot products after a reduction over tx).
    float s[TZ];
#pragma unroll
    for (int j = 0; j < TZ; ++j) {
      const int tok = tz * TZ + j;
      float kf[8];
      if constexpr (kRope) {
        const float4* src = reinterpret_cast<const float4*>(krot + tok * D + tx * 8);
        const float4 a = src[0], b = src[1];
        kf[0] = a.x, kf[1] = a.y, kf[2] = a.z, kf[3] = a.w;
        kf[4] = b.x, kf[5] = b.y, kf[6] = b.z, kf[7] = b.w;
      } else {
        LoadKvAsFloat8(sk + tok * D + tx * 8, kf);
      }
      float acc = 0.f;
#pragma unroll
      for (int k = 0; k < 8; ++k) acc = fmaf(q[k], kf[k], acc);
#pragma unroll
      for (int off = BDX / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
      s[j] = (stage_start + tok < end) ? Log2Logit(acc, p.variant.logit) : -INFINITY;
    }
    float m_new = st.m;
#pragma unroll
    for (int j = 0; j < TZ; ++j) m_new = fmaxf(m_new, s[j]);
    if (m_new != -INFINITY) {  // else every token so far is masked: nothing to add
      st.MoveMax(m_new);
#pragma unroll
      for (int j = 0; j < TZ; ++j) {
        float vf[8];
        LoadKvAsFloat8(sv + (tz * TZ + j) * D + tx * 8, vf);
        st.Add(s[j], vf);  // masked: exp2(-inf) = 0
      }
    }
  }
  GridDependencyTrigger();  // the merge grid (split requests) may be scheduled now
  CpAsyncWait<0>();
  __syncthreads();              // the pipeline buffer is free for the merge scratch
  if constexpr (kIsFp8<Tkv>) {  // V's scale: o is linear in V (before the merge, also linear)
    const float vs = KvScale(p.kv.v_scale, kv_head);
#pragma unroll
    for (int k = 0; k < 8; ++k) st.o[k] *= vs;
  }

  // ---- merge the BDZ token slices ----
  if constexpr (BDZ > 1) {
    float* so = reinterpret_cast<float*>(smem);  // [BDZ][BDY][D]
    float* smd = so + BDZ * BDY * D;             // [BDZ][BDY][2]
    {
      float4* dst = reinterpret_cast<float4*>(so + (tz * BDY + ty) * D + tx * 8);
      dst[0] = make_float4(st.o[0], st.o[1], st.o[2], st.o[3]);
      dst[1] = make_float4(st.o[4], st.o[5], st.o[6], st.o[7]);
      if (tx == 0) {
        smd[(tz * BDY + ty) * 2 + 0] = st.m;
        smd[(tz * BDY + ty) * 2 + 1] = st.d;
      }
    }
    __syncthreads();
    if (tz != 0) return;
    float m_all = -INFINITY;
#pragma unroll
    for (int z = 0; z < BDZ; ++z) m_all = fmaxf(m_all, smd[(z * BDY + ty) * 2]);
    st.BeginMerge(m_all);
    if (m_all != -INFINITY) {
#pragma unroll
      for (int z = 0; z < BDZ; ++z) {
        const float mz = smd[(z * BDY + ty) * 2];
        if (mz == -INFINITY) continue;  // an empty slice weighs 0
        st.AddPart(mz, smd[(z * BDY + ty) * 2 + 1], so + (z * BDY + ty) * D + tx * 8);
      }
    }
  }

  // ---- write: final output (unsplit request, sink folded in) or a partial state (no sink:
  // the merge applies it once) ----
  if (!head_valid) return;
  const bool split = item.state_row >= 0;
  const RowFinal fin = FinalizeRow(split ? nullptr : p.variant.sinks, qo_head, st.m, st.d);
  const float lse = fin.lse;
  float o[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) o[k] = st.o[k] * fin.inv;
  if (!split) {
    const int64_t row = static_cast<int64_t>(b) * p.num_qo_heads + qo_head;
    *reinterpret_cast<uint4*>(static_cast<T*>(p.o) + row * D + tx * 8) = Vec8<T>::FromFloat(o);
    if (p.lse != nullptr && tx == 0) p.lse[row] = lse;
  } else {
    const int64_t row = static_cast<int64_t>(item.state_row) * p.num_qo_heads + qo_head;
    float4* dst = reinterpret_cast<float4*>(p.partial_o + row * D + tx * 8);
    dst[0] = make_float4(o[0], o[1], o[2], o[3]);
    dst[1] = make_float4(o[4], o[5], o[6], o[7]);
    if (tx == 0) p.partial_lse[row] = lse;
  }
}

template <typename T, typename Tkv, int D, int TILE, bool kRope>
cudaError_t LaunchDecodeTileVariant(const DecodeKernelParams& params, int num_items,
                                    int num_kv_heads, cudaStream_t stream) {
  using Tr = DecodeTraits<D, TILE, sizeof(Tkv)>;
  // Largest shared-memory carveout: the occupancy the schedule assumes (several 32 KB CTAs).
  static const cudaError_t carveout = cudaFuncSetAttribute(
      BatchDecodeKernel<T, Tkv, D, TILE, kRope>, cudaFuncAttributePreferredSharedMemoryCarveout,
      cudaSharedmemCarveoutMaxShared);
  if (carveout != cudaSuccess) return carveout;
  const dim3 grid(num_items * num_kv_heads * params.head_tiles);  // == num_items * head_ctas
  BatchDecodeKernel<T, Tkv, D, TILE, kRope><<<grid, Tr::kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}
template <typename T, typename Tkv, int D, int TILE>
cudaError_t LaunchDecodeTile(const DecodeKernelParams& params, int num_items, int num_kv_heads,
                             cudaStream_t stream) {
  return params.variant.rope ? LaunchDecodeTileVariant<T, Tkv, D, TILE, true>(params, num_items,
                                                                              num_kv_heads, stream)
                             : LaunchDecodeTileVariant<T, Tkv, D, TILE, false>(
                                   params, num_items, num_kv_heads, stream);
}

// The schedule's occupancy is that of the kernel without RoPE (a plan does not know whether its
// runs rotate; the RoPE kernel's 8 KB of fp32 K costs at most one CTA per SM).
template <typename T, typename Tkv, int D, int TILE>
cudaError_t DecodeTileOccupancy(int* ctas_per_sm) {
  using Tr = DecodeTraits<D, TILE, sizeof(Tkv)>;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      ctas_per_sm, BatchDecodeKernel<T, Tkv, D, TILE, false>, Tr::kThreads, 0);
}

// Dispatch over the head tiles the kernel is instantiated for (1, 2, 4, 8).
template <typename T, typename Tkv, int D>
cudaError_t LaunchDecodeAnyTile(const DecodeKernelParams& params, int num_items, int num_kv_heads,
                                int head_tile, cudaStream_t stream) {
  switch (head_tile) {
    case 1: return LaunchDecodeTile<T, Tkv, D, 1>(params, num_items, num_kv_heads, stream);
    case 2: return LaunchDecodeTile<T, Tkv, D, 2>(params, num_items, num_kv_heads, stream);
    case 4: return LaunchDecodeTile<T, Tkv, D, 4>(params, num_items, num_kv_heads, stream);
    case 8: return LaunchDecodeTile<T, Tkv, D, 8>(params, num_items, num_kv_heads, stream);
    default: return cudaErrorInvalidValue;
  }
}
template <typename T, typename Tkv, int D>
cudaError_t DecodeAnyTileOccupancy(int head_tile, int* ctas_per_sm) {
  switch (head_tile) {
    case 1: return DecodeTileOccupancy<T, Tkv, D, 1>(ctas_per_sm);
    case 2: return DecodeTileOccupancy<T, Tkv, D, 2>(ctas_per_sm);
    case 4: return DecodeTileOccupancy<T, Tkv, D, 4>(ctas_per_sm);
    case 8: return DecodeTileOccupancy<T, Tkv, D, 8>(ctas_per_sm);
    default: return cudaErrorInvalidValue;
  }
}

// Explicitly instantiated per (q dtype, K/V dtype, head_dim) in generated/decode_hd*_*.cu.
template <DType kQ, DType kKv, int kHeadDim>
cudaError_t LaunchDecodeKernel(const DecodeKernelParams& params, int num_items, int num_kv_heads,
                               int head_tile, cudaStream_t stream) {
  return LaunchDecodeAnyTile<typename CudaTypeOf<kQ>::type, typename CudaTypeOf<kKv>::type,
                             kHeadDim>(params, num_items, num_kv_heads, head_tile, stream);
}
template <DType kQ, DType kKv, int kHeadDim>
cudaError_t DecodeKernelOccupancy(int head_tile, int* ctas_per_sm) {
  return DecodeAnyTileOccupancy<typename CudaTypeOf<kQ>::type, typename CudaTypeOf<kKv>::type,
                                kHeadDim>(head_tile, ctas_per_sm);
}

}  // namespace attnd::kernels::cuda::internal
