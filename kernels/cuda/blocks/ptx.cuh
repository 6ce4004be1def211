// The PTX-level tile operations every attnd CUDA kernel uses, written once: 16-byte cp.async
// copies into shared memory, the XOR swizzle of [rows][D] tiles, ldmatrix, mma.m16n8k16, CTA
// barriers and programmatic dependent launch. Destination first, like the math they implement.
//
// Fragment layouts of mma.m16n8k16 .row.col (PTX ISA; lane = 4 g + c, g = lane / 4, c = lane % 4;
// each 32-bit A/B register holds 2 consecutive-k 16-bit elements):
//   A (16 x 16, rows m, cols k): a0 (m=g, k=2c..2c+1)  a1 (m=g+8, k=2c..)  a2 (m=g, k=2c+8..)
//                                a3 (m=g+8, k=2c+8..)
//   B (16 x 8, rows k, cols n):  b0 (k=2c..2c+1, n=g)  b1 (k=2c+8..2c+9, n=g)
//   C (16 x 8, fp32):            c0,c1 (m=g, n=2c,2c+1)  c2,c3 (m=g+8, n=2c,2c+1)
// The C layout of two adjacent n8 fragments is the A layout of one k16 step (P = softmax(S) is
// fed to O += P V from registers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace attnd::kernels::cuda::internal {

// Shared-memory address of a generic pointer into shared memory (the operand of cp.async,
// ldmatrix).
__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- cp.async (sm_80+): 16-byte global -> shared copies that bypass L1 ---------------------
// valid == false zero-fills the 16 destination bytes without reading global memory.
__device__ __forceinline__ void CpAsync16(uint32_t smem_dst, const void* gmem_src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_dst), "l"(gmem_src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void CpAsync16(void* smem_dst, const void* gmem_src, bool valid) {
  CpAsync16(SmemAddr(smem_dst), gmem_src, valid);
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most kPending of this thread's committed groups are in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// ---- swizzled tiles ------------------------------------------------------------------------
// Element offset of (row, 16-byte chunk) in a [rows][D] tile of 16-bit elements whose chunks are
// XOR-swizzled by row % 8: chunk c of row r is stored at chunk c ^ (r & 7), so the 8 row
// addresses of every ldmatrix phase and every 16-byte store of a warp hit distinct bank groups.
// D >= 64 (at least 8 chunks per row).
template <int D>
__device__ __forceinline__ int Swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// Byte offset of (row, 16-byte chunk) in a [rows][D] tile of fp8 elements (D / 16 = C chunks per
// row, C = 4 or 8), its chunks XOR-swizzled so that the 8 rows of every ldmatrix phase (8
// consecutive rows, one chunk) hit distinct bank groups: chunk c of row r at c ^ ((r / (8 / C)) &
// (C - 1)) (D = 128: one row per 128-byte line, c ^ (r & 7); D = 64: two rows per line,
// c ^ ((r / 2) & 3)).
template <int D>
__device__ __forceinline__ int SwzFp8(int row, int chunk) {
  constexpr int kChunks = D / 16;
  static_assert(kChunks == 4 || kChunks == 8, "fp8 rows of 64 or 128 bytes");
  constexpr int kRowsPerLine = 8 / kChunks;
  return row * D + ((chunk ^ ((row / kRowsPerLine) & (kChunks - 1))) << 4);
}

// ---- ldmatrix: four 8x8 16-bit matrices from shared memory into the fragment layout ---------
// Lane i gives the address of row i % 8 of matrix i / 8; r[j] receives matrix j.
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr));
}
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* smem_row) {
  LdMatrixX4(r, SmemAddr(smem_row));
}
// The same, each matrix transposed (the B operand of O += P V from row-major V).
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], uint32_t smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* smem_row) {
  LdMatrixX4Trans(r, SmemAddr(smem_row));
}

// ---- mma.sync m16n8k16, fp32 accumulate: d += a * b -----------------------------------------
// T = __half or __nv_bfloat16 (the A and B element type).
template <typename T>
__device__ __forceinline__ void Mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>);
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// ---- barriers ------------------------------------------------------------------------------
// CTA barrier that may sit at different instructions in different warps (the non-.aligned
// form; __syncthreads is barrier.sync.aligned, undefined unless every thread executes that same
// instruction). Same memory ordering among the CTA's threads as __syncthreads.
__device__ __forceinline__ void CtaBarrierDivergent() {
  asm volatile("barrier.sync 0;\n" ::: "memory");
}

// ---- programmatic dependent launch (sm_90) ---------------------------------------------------
// The decode kernels signal once their main loop is done (the split-KV merge grid may then be
// scheduled); the merge kernel waits for the decode grid's completion and memory flush before
// reading partial states. Both are no-ops when the launch has no programmatic dependency.
__device__ __forceinline__ void GridDependencyTrigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void GridDependencyWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

}  // namespace attnd::kernels::cuda::internal
