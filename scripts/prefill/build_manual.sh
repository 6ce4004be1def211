#!/usr/bin/env bash
# Builds prefill_test and prefill_bench with nvcc directly (no CMake), abseil linked statically
# so that the binaries run on the GPU host (which has no abseil). Output: $OUT_DIR (default
# /work/main/build-prefill/manual). Usage: scripts/prefill/build_manual.sh [-j N]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/build-prefill/manual}
JOBS=2
if [[ "${1:-}" == "-j" ]]; then JOBS=$2; fi
mkdir -p "$OUT_DIR/obj"
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
NVFLAGS=(-std=c++20 -O3 -gencode=arch=compute_90a,code=sm_90a -lineinfo -I"$ROOT/kernels/include"
         -I"$ROOT/tests/gpu" -I"$ROOT/kernels/cuda")
objs=()
compile() {  # src obj
  local src=$1 obj=$2
  if [[ ! -f $obj || $src -nt $obj || $ROOT/kernels/cuda/prefill/prefill_kernel.cuh -nt $obj ]]; then
    case $src in
      *.cu) "$NVCC" "${NVFLAGS[@]}" -Xptxas -v -c "$src" -o "$obj" 2> "$obj.log" || { cat "$obj.log"; exit 1; } ;;
      *.cc) g++ -std=c++20 -O2 -DATTND_CUDA_HD64=1 -DATTND_CUDA_HD128=1 -DATTND_CUDA_HD256=1 \
              -I"$ROOT/kernels/include" -I"$ROOT/kernels/cpu" -I"$ROOT/kernels/cuda" \
              -I/usr/local/cuda/include -c "$src" -o "$obj" ;;
    esac
  fi
}
srcs=("$ROOT"/kernels/cuda/prefill/*.cu "$ROOT"/kernels/cuda/generated/prefill_*.cu
      "$ROOT"/kernels/cpu/attention.cc "$ROOT"/kernels/cpu/validation.cc
      "$ROOT"/kernels/cuda/backend/launch_checks.cc "$ROOT"/kernels/cuda/backend/launch.cc
      "$ROOT"/kernels/cuda/planning/prefill_tiling.cc "$ROOT"/kernels/cuda/planning/page_table.cc
      "$ROOT"/kernels/cuda/append/append_kv.cu "$ROOT"/kernels/cuda/merge/merge_states.cu
      "$ROOT"/tests/gpu/prefill_test.cu "$ROOT"/bench/prefill_bench.cu)
running=0
for s in "${srcs[@]}"; do
  o="$OUT_DIR/obj/$(basename "$s").o"
  compile "$s" "$o" &
  running=$((running + 1))
  if (( running >= JOBS )); then wait -n; running=$((running - 1)); fi
done
wait
ABSL=(-Xlinker --start-group)
for l in status statusor strings str_format_internal cord cordz_info cord_internal cordz_functions \
         cordz_handle strings_internal throw_delegate raw_logging_internal int128 base spinlock_wait \
         synchronization time stacktrace symbolize debugging_internal demangle_internal malloc_internal \
         graphcycles_internal time_zone exponential_biased strerror; do
  if [[ -f /usr/lib/x86_64-linux-gnu/libabsl_$l.a ]]; then ABSL+=(/usr/lib/x86_64-linux-gnu/libabsl_$l.a); fi
done
ABSL+=(-Xlinker --end-group)
O=$OUT_DIR/obj
"$NVCC" -gencode=arch=compute_90a,code=sm_90a -o "$OUT_DIR/prefill_test" "$O/prefill_test.cu.o" \
  "$O"/prefill.cu.o "$O"/prefill_hd*.cu.o "$O/prefill_tiling.cc.o" "$O/page_table.cc.o" "$O/attention.cc.o" "$O/validation.cc.o" \
  "$O/launch_checks.cc.o" "$O/launch.cc.o" "$O/append_kv.cu.o" "$O/merge_states.cu.o" "${ABSL[@]}" \
  -lpthread
"$NVCC" -gencode=arch=compute_90a,code=sm_90a -o "$OUT_DIR/prefill_bench" "$O/prefill_bench.cu.o" \
  "$O"/prefill.cu.o "$O"/prefill_hd*.cu.o "$O/prefill_tiling.cc.o" "$O/page_table.cc.o" "$O/launch_checks.cc.o" "$O/launch.cc.o" \
  "$O/append_kv.cu.o" "$O/merge_states.cu.o" "${ABSL[@]}"
grep -h -E "registers|spill" "$O"/prefill_hd*.log | sort | uniq -c
echo "built $OUT_DIR/prefill_test $OUT_DIR/prefill_bench"
