# CUDA prefill sources, filtered by ATTND_CUDA_HEAD_DIMS. include() this file from the
# CMakeLists.txt that creates attnd_kernels_cuda (same directory scope), then add
# ${ATTND_PREFILL_SOURCES} to that target. Sets:
#   ATTND_PREFILL_SOURCES  the dispatcher plus the prefill_hd<D>_*.cu of every compiled head dim
# and tells the dispatcher which head dims exist (source-file compile definitions).
set(_attnd_prefill_dir ${CMAKE_CURRENT_LIST_DIR})
set(ATTND_PREFILL_SOURCES ${_attnd_prefill_dir}/prefill_api.cu)
set(_attnd_prefill_defs ATTND_PREFILL_HEAD_DIMS_FILTERED=1)
foreach(_hd IN LISTS ATTND_CUDA_HEAD_DIMS)
  # prefill_hd<D>_<dtype>.cu and variants such as prefill_hd<D>_<dtype>_wide.cu
  file(GLOB _attnd_prefill_hd_sources CONFIGURE_DEPENDS ${_attnd_prefill_dir}/prefill_hd${_hd}_*.cu)
  if(_attnd_prefill_hd_sources)
    list(APPEND ATTND_PREFILL_SOURCES ${_attnd_prefill_hd_sources})
    list(APPEND _attnd_prefill_defs ATTND_PREFILL_HD${_hd}=1)
  endif()
endforeach()
set_source_files_properties(${_attnd_prefill_dir}/prefill_api.cu PROPERTIES
                            COMPILE_DEFINITIONS "${_attnd_prefill_defs}")
