#!/usr/bin/env bash
# The prepared check for a lent NVIDIA GPU machine (issue 16), ≤ 8 minutes, one run:
#   1. the product's NVIDIA fact parsers on the real nvidia-smi, /proc/driver/nvidia/version and
#      /sys/module/nvidia/version, each fact compared with an independent reading;
#   2. llama-server built with CUDA for the detected architecture through the product's own build
#      script and configure line (operations/llama_build.py), ccache off;
#   3. cuobjdump --list-elf of libggml-cuda.so: SASS for exactly that architecture;
#   4. llama-server on the GPU with a tiny generated GGUF, -ngl all: tokens/s.
#
# Here (development machine, once):   python3 bench/gpu_check.py prepare bench/results/gpu-check
#   (the 37 MB llama.cpp tarball and a ~13 MB tiny GGUF, under an ignored path that `carry` takes)
# On the GPU machine, from the repository root:
#   OUT=/some/dir bash bench/gpu_check.sh [bench/results/gpu-check]
# with the run tool: carry ["bench/results/gpu-check"], command "bash bench/gpu_check.sh".
# Knobs: TOOLKIT (default: the newest /usr/local/cuda-X.Y), FA=on (FlashAttention kernels, slower
# build; default off: -DGGML_CUDA_FA=OFF). The build uses every core (the product's `-j "$(nproc)"`).
# Everything it finds goes to $OUT (raw readings, logs, summary.json); exit 0 only when all passed.
set -uo pipefail
export LC_ALL=C PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
IN=${1:-bench/results/gpu-check}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
T0=$(date +%s)
fail=0
note() { echo "gpu_check: $*" | tee -a "$OUT/notes.txt"; }

# 1. facts
python3 bench/gpu_check.py raw "$OUT/raw"
if python3 bench/gpu_check.py facts "$OUT/raw" > "$OUT/facts.json"; then note "facts: every parsed fact matched"
else note "facts: MISMATCH (see facts.json)"; fail=1; fi
CC=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["compute_caps"]; print(c[0] if c and c[0] else "")' "$OUT/facts.json")
[ -n "$CC" ] || { note "no compute capability parsed: cannot choose the architecture"; CC=9.0; fail=1; }

# 2. build
TOOLKIT=${TOOLKIT:-$(ls -d /usr/local/cuda-*.* 2>/dev/null | sed 's#.*/cuda-##' | sort -V | tail -1)}
[ -x "/usr/local/cuda-$TOOLKIT/bin/nvcc" ] || { note "no nvcc at /usr/local/cuda-$TOOLKIT/bin/nvcc"; exit 1; }
FLAGS=()
[ "${FA:-off}" = on ] || FLAGS+=(-DGGML_CUDA_FA=OFF)
command -v ccache >/dev/null || FLAGS+=(-DCMAKE_C_COMPILER_LAUNCHER= -DCMAKE_CXX_COMPILER_LAUNCHER= -DCMAKE_CUDA_COMPILER_LAUNCHER=)
export CCACHE_DISABLE=1
python3 bench/gpu_check.py build "$OUT/b" "$IN/llama.cpp.tar.gz" "$CC" "$TOOLKIT" "${FLAGS[@]}" > "$OUT/spec.json" || exit 1
note "spec: $(cat "$OUT/spec.json")"
missing=""
for p in $(cat "$OUT/b/deps"); do dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^.i' || missing="$missing $p"; done
B0=$(date +%s)
if [ -z "$missing" ]; then
  # the whole product script: it installs into /opt/provision/llama.cpp and checks --version and ldd itself
  dest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tarball_path"])' "$OUT/spec.json")
  mkdir -p "$(dirname "$dest")" && cp "$IN/llama.cpp.tar.gz" "$dest"
  bash "$OUT/b/build.sh" > "$OUT/build.log" 2>&1; rc=$?
  BIN=/opt/provision/llama.cpp/current/bin
  how="the product's build script"
else
  # no apt here (no network): the product's configure and build lines, on the packages this machine has
  note "not installed:$missing (the product's script would apt-get them): running its configure line directly"
  mkdir -p "$OUT/b/src" && tar -xzf "$IN/llama.cpp.tar.gz" -C "$OUT/b/src" --strip-components=1
  bash "$OUT/b/configure.sh" > "$OUT/build.log" 2>&1; rc=$?
  BIN="$OUT/b/build/bin"
  how="the product's configure line"
fi
BUILD_S=$(( $(date +%s) - B0 ))
if [ $rc -ne 0 ]; then note "build FAILED (exit $rc, $how, ${BUILD_S}s): tail of build.log:"; tail -30 "$OUT/build.log"; fail=1
else note "build: ok in ${BUILD_S}s ($how, CUDA $TOOLKIT, compute capability $CC)"; fi

# 3. SASS
SASS=""
if [ -f "$BIN/libggml-cuda.so" ]; then
  "/usr/local/cuda-$TOOLKIT/bin/cuobjdump" --list-elf "$BIN/libggml-cuda.so" > "$OUT/cuobjdump.txt" 2>&1
  SASS=$(python3 bench/gpu_check.py sass "$OUT/cuobjdump.txt")
  want="sm_${CC/./}"
  if [ "$SASS" = "$want" ]; then note "cuobjdump: SASS for $SASS only"; else note "cuobjdump: $SASS (wanted $want only)"; fail=1; fi
fi

# 4. run on the GPU
TPS=null
if [ -x "$BIN/llama-server" ]; then
  "$BIN/llama-server" --list-devices > "$OUT/list-devices.txt" 2>&1
  "$BIN/llama-server" -m "$IN/tiny.gguf" -ngl all --host 127.0.0.1 --port 18089 -c 2048 > "$OUT/server.log" 2>&1 &
  pid=$!
  if python3 bench/gpu_check.py serve http://127.0.0.1:18089 > "$OUT/serve.json"; then
    TPS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tokens_per_s"])' "$OUT/serve.json")
    grep -q "offloaded .* layers to GPU" "$OUT/server.log" && note "served on the GPU: $(grep -o 'offloaded .* layers to GPU' "$OUT/server.log")" \
      || { note "server log does not say the layers went to the GPU"; fail=1; }
  else note "no answer from llama-server (see server.log)"; fail=1; fi
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
fi

python3 - "$OUT" "$BUILD_S" "$TPS" "$SASS" "$fail" "$(( $(date +%s) - T0 ))" <<'EOF'
import json, sys
out, build_s, tps, sass, fail, total = sys.argv[1:]
facts = json.load(open(f"{out}/facts.json")) if open(f"{out}/facts.json").read().strip() else {}
summary = {"ok": fail == "0", "build_seconds": int(build_s), "tokens_per_s": None if tps == "null" else float(tps),
           "sass": sass.split(), "facts_ok": facts.get("ok"), "driver": facts.get("driver"),
           "gpus": facts.get("gpus"), "compute_caps": facts.get("compute_caps"), "total_seconds": int(total)}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(summary, indent=1))
EOF
exit $fail
