// The Hopper (sm_90a) building blocks of the warp-specialized kernels, written once: shared-memory
// matrix descriptors of 128-byte-swizzled tiles, warpgroup MMA (wgmma.mma_async, A from shared
// memory or from registers), mbarriers (the producer/consumer handshake of a multi-stage
// pipeline, with cp.async arrivals), the async-proxy fence, named barriers and the per-warpgroup
// register budget (setmaxnreg). Hand-written PTX, as blocks/ptx.cuh is for sm_80 (CUTLASS's CuTe
// has the same atoms; our kernels already own their tile layouts, and the handful of instructions
// below keep the build light: PTX ISA 8.x, "Asynchronous Warpgroup Level Matrix Instructions").
//
// Tiles in shared memory ("SW128 tiles"): a [rows][cols] tile of 16-bit elements is stored as
// cols / 64 column blocks of [rows][64] (128-byte rows), each 1024-byte aligned; inside a block
// 16-byte chunk c of row r sits at chunk c ^ (r % 8) (the hardware's 128-byte swizzle: 8 rows x
// 128 bytes is one swizzle atom). Both wgmma operand majors read that layout:
//   K-major (A = Q [m][d], B = K [n][d] for S = Q K^T: the reduction dim d contiguous): one k16
//     step is 32 bytes inside a row; 8-row groups are 1024 bytes apart (stride byte offset); the
//     leading byte offset is unused for swizzled K-major layouts.
//   MN-major (B = V [kv][d] for O = P V, transposed: the output dim d contiguous): 8-row (k)
//     groups are 1024 bytes apart (stride byte offset), 64-column (n) blocks are one column block
//     apart (leading byte offset = rows * 128 bytes); one k16 step is 16 rows = 2048 bytes.
//
// Accumulator fragments (wgmma .m64nNk16, fp32): warp w of the warpgroup holds rows 16 w .. +15;
// register 4 j + e of a thread is the mma.m16n8 C fragment element e of n-block j (blocks/ptx.cuh):
// the layout every mma.sync building block (MmaRowsSoftmax, the P -> A conversion) already uses.
// A from registers (.m64nNk16): the mma.m16n8k16 A fragment of the warp's 16 rows.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace attnd::kernels::cuda::internal {

// Byte offset of (row, 16-byte chunk) in an SW128 tile of kRows rows (see above).
template <int kRows>
__device__ __forceinline__ uint32_t Sw128Offset(int row, int chunk) {
  return static_cast<uint32_t>((chunk >> 3) * (kRows * 128) + row * 128 +
                               (((chunk & 7) ^ (row & 7)) << 4));
}

// ---- shared-memory matrix descriptors --------------------------------------------------------
// Bits: start address >> 4 [0, 14), leading byte offset >> 4 [16, 30), stride byte offset >> 4
// [32, 46), base offset [49, 52) = 0 (atoms 1024-byte aligned), swizzle [62, 64): 1 = 128 bytes.
__device__ __forceinline__ uint64_t SmemDescriptor(uint32_t smem_addr, uint32_t leading_bytes,
                                                   uint32_t stride_bytes) {
  return static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>((leading_bytes & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((stride_bytes & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}
// K-major operand at smem_addr (a row start plus the k step's 32-byte offset).
__device__ __forceinline__ uint64_t KMajorDescriptor(uint32_t smem_addr) {
  return SmemDescriptor(smem_addr, 16, 1024);
}
// MN-major operand of a tile of kRows rows (the k dim) at smem_addr (the k step's row start).
template <int kRows>
__device__ __forceinline__ uint64_t MnMajorDescriptor(uint32_t smem_addr) {
  return SmemDescriptor(smem_addr, kRows * 128, 1024);
}

// ---- warpgroup MMA -------------------------------------------------------------------------
// Order: WgmmaFence (registers written since are visible to the MMAs), the MMAs, WgmmaCommit,
// WgmmaWait<n> (at most n groups in flight), then FenceAccumulators before the registers are read.
__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// The compiler sees an MMA's results when it is issued; reads of them must stay after the wait
// (and the registers of in-flight operands must not be reused): an empty asm on each register,
// after WgmmaWait, orders them.
template <int kN>
__device__ __forceinline__ void FenceAccumulators(float (&d)[kN][4]) {
#pragma unroll
  for (int j = 0; j < kN; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
}
template <int kN>
__device__ __forceinline__ void FenceOperands(uint32_t (&a)[kN][4]) {
#pragma unroll
  for (int j = 0; j < kN; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[j][e])::"memory");
}

#define ATTND_WGMMA_D64_OPERANDS                                                                \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),     \
      "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
      "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), \
      "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
      "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), \
      "+f"(d[7][2]), "+f"(d[7][3])
#define ATTND_WGMMA_D64_LIST                                                       \
  "{"                                                                              \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "         \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31" \
  "}"
#define ATTND_WGMMA_D128_OPERANDS                                                                 \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),       \
      "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]),   \
      "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]),   \
      "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),   \
      "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]),   \
      "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]),   \
      "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), \
      "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]),             \
      "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]),             \
      "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]),             \
      "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]),             \
      "+f"(d[15][2]), "+f"(d[15][3])
#define ATTND_WGMMA_D128_LIST                                                        \
  "{"                                                                                \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "           \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"   \
  "}"

#define ATTND_WGMMA_SS(N, TY, IA, IB, IS)                                            \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" IS                               \
               ", 0;\n"                                                              \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY           \
               " " ATTND_WGMMA_D##N##_LIST ", %" IA ", %" IB ", p, 1, 1, 0, 0;\n}\n" \
               : ATTND_WGMMA_D##N##_OPERANDS                                         \
               : "l"(a_desc), "l"(b_desc), "r"(scale_d))
#define ATTND_WGMMA_RS(N, TY, IA, IB, IS)                                           \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" IS                              \
               ", 0;\n"                                                             \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY          \
               " " ATTND_WGMMA_D##N##_LIST ", {%" IA "}, %" IB ", p, 1, 1, 1;\n}\n" \
               : ATTND_WGMMA_D##N##_OPERANDS                                        \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(scale_d))

// d (+)= A B for a 64 x N x 16 step, A and B K-major in shared memory (descriptors). scale_d 0:
// d = A B (the first k step). T: __half or __nv_bfloat16.
template <int N, typename T>
__device__ __forceinline__ void WgmmaSS(float (&d)[N / 8][4], uint64_t a_desc, uint64_t b_desc,
                                        int scale_d) {
  static_assert(N == 64 || N == 128, "instantiated shapes: n64, n128");
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (N == 128) {
    if constexpr (std::is_same_v<T, __half>) {
      ATTND_WGMMA_SS(128, "f16", "64", "65", "66");
    } else {
      ATTND_WGMMA_SS(128, "bf16", "64", "65", "66");
    }
  } else {
    if constexpr (std::is_same_v<T, __half>) {
      ATTND_WGMMA_SS(64, "f16", "32", "33", "34");
    } else {
      ATTND_WGMMA_SS(64, "bf16", "32", "33", "34");
    }
  }
#else
  __trap();  // sm_90a only (the launchers dispatch here only on compute capability 9.0)
#endif
}

// d (+)= A B for a 64 x N x 16 step, A from registers (this thread's m16n8k16 A fragment of its
// warp's rows), B MN-major in shared memory (transposed: a [k][n] tile with n contiguous).
template <int N, typename T>
__device__ __forceinline__ void WgmmaRS(float (&d)[N / 8][4], const uint32_t (&a)[4],
                                        uint64_t b_desc, int scale_d) {
  static_assert(N == 64 || N == 128, "instantiated shapes: n64, n128");
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (N == 128) {
    if constexpr (std::is_same_v<T, __half>) {
      ATTND_WGMMA_RS(128, "f16", "64, %65, %66, %67", "68", "69");
    } else {
      ATTND_WGMMA_RS(128, "bf16", "64, %65, %66, %67", "68", "69");
    }
  } else {
    if constexpr (std::is_same_v<T, __half>) {
      ATTND_WGMMA_RS(64, "f16", "32, %33, %34, %35", "36", "37");
    } else {
      ATTND_WGMMA_RS(64, "bf16", "32, %33, %34, %35", "36", "37");
    }
  }
#else
  __trap();
#endif
}

#undef ATTND_WGMMA_SS
#undef ATTND_WGMMA_RS
#undef ATTND_WGMMA_D64_OPERANDS
#undef ATTND_WGMMA_D64_LIST
#undef ATTND_WGMMA_D128_OPERANDS
#undef ATTND_WGMMA_D128_LIST

// ---- mbarriers (shared::cta) -------------------------------------------------------------------
// A pipeline stage's "full" barrier completes when its producers' copies have landed, its "empty"
// barrier when every consumer has finished reading it. Phases alternate; a waiter names the
// parity of the phase it waits for (a fresh barrier counts its phase "1" as complete, so the
// producer's first wait on an empty barrier, parity 1, passes).
__device__ __forceinline__ void MbarrierInit(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void MbarrierArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives once this thread's earlier cp.async copies have completed (the barrier's count
// includes this arrival: .noinc).
__device__ __forceinline__ void CpAsyncMbarrierArrive(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void MbarrierWait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// Generic-proxy writes (cp.async, st.shared) seen by this thread become visible to its
// async-proxy reads (wgmma operands): after waiting on a full barrier, before the MMAs.
__device__ __forceinline__ void FenceProxyAsync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Barrier `id` (1..15; 0 is __syncthreads') among kThreads threads (a multiple of 32).
template <int kThreads>
__device__ __forceinline__ void NamedBarrierSync(int id) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(kThreads) : "memory");
}

// The register budget of this warpgroup (all its warps execute it): producers give registers
// back, consumers take them (the sum over the CTA stays within the launch's allocation).
template <int kRegs>
__device__ __forceinline__ void WarpgroupRegistersDecrease() {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}
template <int kRegs>
__device__ __forceinline__ void WarpgroupRegistersIncrease() {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}

}  // namespace attnd::kernels::cuda::internal
