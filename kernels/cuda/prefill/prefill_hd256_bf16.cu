// Generated instantiation: prefill kernels for head_dim 256, __nv_bfloat16 (paged and ragged K/V).
#include "prefill_kernel.cuh"

namespace attnd::kernels::cuda::prefill {
template cudaError_t LaunchPrefill<256, __nv_bfloat16, true>(const PrefillParams&, cudaStream_t);
template cudaError_t LaunchPrefill<256, __nv_bfloat16, false>(const PrefillParams&, cudaStream_t);
}  // namespace attnd::kernels::cuda::prefill
