// Generated instantiation: prefill kernels for head_dim 128, __half, the FA2-shaped tile
// (TileVariant::kWide64: 32 rows per warp, 64 keys per step), paged and ragged K/V.
#include "prefill_kernel.cuh"

namespace attnd::kernels::cuda::prefill {
template cudaError_t LaunchPrefill<128, __half, true, TileVariant::kWide64>(const PrefillParams&,
                                                                         cudaStream_t);
template cudaError_t LaunchPrefill<128, __half, false, TileVariant::kWide64>(const PrefillParams&,
                                                                          cudaStream_t);
}  // namespace attnd::kernels::cuda::prefill
