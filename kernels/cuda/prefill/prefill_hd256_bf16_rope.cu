// Generated instantiation: prefill kernels for head_dim 256, __nv_bfloat16, with RoPE on the fly (the
// default tile, q and k rotated in fp32 and kept as hi + lo parts), paged and ragged K/V.
#include "prefill_kernel.cuh"

namespace attnd::kernels::cuda::prefill {
template cudaError_t LaunchPrefill<256, __nv_bfloat16, true, TileVariant::kDefault, true>(
    const PrefillParams&, cudaStream_t);
template cudaError_t LaunchPrefill<256, __nv_bfloat16, false, TileVariant::kDefault, true>(
    const PrefillParams&, cudaStream_t);
}  // namespace attnd::kernels::cuda::prefill
