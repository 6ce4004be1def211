// Generated instantiation: prefill kernels for head_dim 128, __half (paged and ragged K/V).
#include "prefill_kernel.cuh"

namespace attnd::kernels::cuda::prefill {
template cudaError_t LaunchPrefill<128, __half, true>(const PrefillParams&, cudaStream_t);
template cudaError_t LaunchPrefill<128, __half, false>(const PrefillParams&, cudaStream_t);
}  // namespace attnd::kernels::cuda::prefill
