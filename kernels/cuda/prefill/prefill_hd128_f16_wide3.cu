// Generated instantiation: prefill kernels for head_dim 128, __half, the wide tile with a 3-stage
// K/V pipeline (TileVariant::kWide3: 32 rows per warp, 32 keys per step), paged and ragged K/V.
#include "prefill_kernel.cuh"

namespace attnd::kernels::cuda::prefill {
template cudaError_t LaunchPrefill<128, __half, true, TileVariant::kWide3>(const PrefillParams&,
                                                                        cudaStream_t);
template cudaError_t LaunchPrefill<128, __half, false, TileVariant::kWide3>(const PrefillParams&,
                                                                         cudaStream_t);
}  // namespace attnd::kernels::cuda::prefill
