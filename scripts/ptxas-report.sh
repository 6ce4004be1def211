#!/usr/bin/env bash
# ptxas-report.sh: registers, spills and shared memory of every CUDA kernel of attnd_kernels_cuda.
#
# Usage: scripts/ptxas-report.sh [BUILD_DIR] [-j N]   (BUILD_DIR defaults to ./build)
#
# For every .cu of the target attnd_kernels_cuda in BUILD_DIR/compile_commands.json (configure
# with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON, the project default), re-runs its nvcc command as a
# device-only compile (-cubin, the SASS target of the command's first --generate-code) with
# -Xptxas -v, and prints one row per kernel, sorted by name:
#   kernel (demangled with c++filt when present) | regs | spill stores | spill loads | smem | file
# Only device code is compiled (no host pass, nothing written into the build dir), so a report
# costs about half a build. Used to check that a refactor leaves register use and spills as they
# were (docs/bench-runs/*-ptxas-*.txt).
set -euo pipefail
build=build
jobs=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    -j) jobs="$2"; shift 2 ;;
    -j*) jobs="${1#-j}"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) build="$1"; shift ;;
  esac
done
db="$build/compile_commands.json"
[[ -f "$db" ]] || { echo "ptxas-report: no $db (configure with CMAKE_EXPORT_COMPILE_COMMANDS=ON)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One shell script per translation unit: the command with its output swapped for a cubin.
python3 - "$db" "$tmp" <<'PY'
import json, re, shlex, sys, os
db, tmp = sys.argv[1], sys.argv[2]
n = 0
for e in json.load(open(db)):
    f = e["file"]
    cmd = e.get("command") or shlex.join(e["arguments"])
    if not f.endswith(".cu") or "attnd_kernels_cuda.dir" not in cmd:
        continue
    args = shlex.split(cmd)
    out, keep, skip = [], [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a in ("-o", "-MF", "-MT"):
            skip = True
            continue
        if a in ("-c", "-MD", "-MMD", "-M"):
            continue
        # One SASS target for a cubin: code=[compute_90a,sm_90a] -> code=sm_90a.
        m = re.match(r"(--generate-code=arch=\w+,code=)\[?([^\]]*)\]?$", a)
        if m:
            sass = [c for c in m.group(2).split(",") if c.startswith("sm_")]
            if keep:  # keep the first target only
                continue
            a = m.group(1) + (sass[0] if sass else m.group(2).split(",")[0])
            keep.append(a)
        out.append(a)
    cubin = os.path.join(tmp, f"{n}.cubin")
    out += ["-cubin", "-o", cubin, "-Xptxas", "-v"]
    with open(os.path.join(tmp, f"{n}.sh"), "w") as s:
        s.write(f"cd {shlex.quote(e['directory'])} && {shlex.join(out)} > {tmp}/{n}.log 2>&1 "
                f"|| {{ echo 'ptxas-report: compile failed: {f}' >&2; cat {tmp}/{n}.log >&2; exit 1; }}\n")
    with open(os.path.join(tmp, f"{n}.file"), "w") as s:
        s.write(os.path.relpath(f, os.path.dirname(os.path.abspath(db)) + "/.."))
    n += 1
if n == 0:
    sys.exit("ptxas-report: no .cu of attnd_kernels_cuda in " + db)
PY

find "$tmp" -maxdepth 1 -name "*.sh" -print0 | xargs -0 -P "$jobs" -n 1 bash

# ptxas -v prints, per entry:  Compiling entry function '<name>' ... / N bytes stack frame,
# S bytes spill stores, L bytes spill loads / Used R registers, ... B bytes smem ...
for log in "$tmp"/*.log; do
  f=$(cat "${log%.log}.file")
  awk -v file="$f" '
    /Compiling entry function/ { match($0, /\x27[^\x27]+\x27/); name = substr($0, RSTART+1, RLENGTH-2); next }
    /Function properties for/ { fp = $NF; next }
    /spill stores/ && name != "" && fp == name { st = $5; ld = $9; next }
    /Used [0-9]+ registers/ && name != "" {
      match($0, /Used [0-9]+ registers/); r = substr($0, RSTART+5, RLENGTH-15)
      sm = 0; if (match($0, /[0-9]+ bytes smem/)) sm = substr($0, RSTART, RLENGTH-11)
      printf "%s\t%s\t%s\t%s\t%s\t%s\n", name, r, (st == "" ? 0 : st), (ld == "" ? 0 : ld), sm, file
      name = ""; st = ""; ld = ""
    }' "$log"
done > "$tmp/rows.tsv"

demangle() { if command -v c++filt >/dev/null; then c++filt; else cat; fi; }
cut -f1 "$tmp/rows.tsv" | demangle > "$tmp/names.txt"
paste "$tmp/names.txt" <(cut -f2- "$tmp/rows.tsv") | sort -t$'\t' -k1,1 -k6,6 |
  awk -F'\t' 'BEGIN { printf "%-6s %-7s %-7s %-7s  %-44s %s\n", "regs", "spillST", "spillLD", "smem", "file", "kernel" }
              { printf "%-6s %-7s %-7s %-7s  %-44s %s\n", $2, $3, $4, $5, $6, $1 }'
