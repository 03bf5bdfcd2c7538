#!/usr/bin/env bash
# The GPU checks of issue 29 in one run of under 10 minutes, on a machine with one CUDA GPU:
#
#   bash benchmarks/gpu_check.sh [OUT]        # OUT: where the results go (default benchmarks/results)
#
# 1. the CUDA-only tests (pytest -m cuda: gradient caching's CUDA RNG replay, the checkpoint's
#    CUDA RNG state, precision on a GPU, fused AdamW, inductor-compiled step, torchcodec NVDEC);
# 2. train_speed.py: STAN ViT-B/32 and ViT-B/16, eager vs compiled and the other levers
#    ($LEVERS), clips/s, MFU, peak memory;
# 3. codec_speed.py --loader: ms per clip PyAV vs torchcodec (CPU and GPU), and training batches
#    from PyAV in CPU workers vs torchcodec decoding on the GPU.
# Each part has its own time limit, so one that hangs cannot take the others' time. Results:
# OUT/{train_speed,codec_speed}_<card>.{md,json} and OUT/cuda_tests_<card>.txt, <card> the GPU's
# name (spaces as underscores).
#
# Nothing is downloaded: Python is .venv/bin/python when the repository carries a virtual
# environment (else python3 on PATH) with mugstan's dependencies, and mugstan is imported from
# src/. torchcodec needs FFmpeg's shared libraries (apt-get install ffmpeg); without them the
# torchcodec rows are skipped and the file says so.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
LEVERS=${LEVERS:-"eager|compiled|compiled + fused AdamW|compiled + fused AdamW, 2x batch"}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"

if ! "$PY" -c "import torch, open_clip, av, mugstan; assert torch.cuda.is_available(), 'no CUDA GPU'" 2>/tmp/gpu_check_env.txt; then
    echo "error: $PY cannot run the checks: $(tail -1 /tmp/gpu_check_env.txt); carry a virtual environment with mugstan's dependencies as .venv" >&2
    exit 2
fi
CARD=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
echo "card: $CARD; python: $PY; torch: $("$PY" -c 'import torch; print(torch.__version__)'); $(nproc) cores"
"$PY" -c "from mugstan.data.codec import video_decoder_class; video_decoder_class()" 2>/tmp/gpu_check_codec.txt \
    && CODEC=yes || { CODEC=no; echo "torchcodec unavailable, its rows are skipped: $(tail -1 /tmp/gpu_check_codec.txt)"; }

start=$SECONDS
echo "== 1/3 CUDA tests"
timeout 120 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$OUT/cuda_tests_$CARD.txt" | tail -15

echo "== 2/3 train_speed.py ($((SECONDS - start)) s so far)"
IFS='|' read -r -a levers <<< "$LEVERS"
timeout 330 "$PY" benchmarks/train_speed.py --backbones ViT-B-32 ViT-B-16 --batch 128 64 --steps 8 --levers "${levers[@]}" \
    --json "$OUT/train_speed_$CARD.json" 2>&1 | tee "$OUT/train_speed_$CARD.md" | grep -v "^W[0-9]"

echo "== 3/3 codec_speed.py --loader ($((SECONDS - start)) s so far)"
if [ "$CODEC" = yes ]; then
    timeout 150 "$PY" benchmarks/codec_speed.py --loader --videos 8 --clips 24 --workers $(( $(nproc) - 1 )) \
        --json "$OUT/codec_speed_$CARD.json" 2>&1 | tee "$OUT/codec_speed_$CARD.md"
else
    echo "torchcodec unavailable on this machine ($(tail -1 /tmp/gpu_check_codec.txt)): no decode comparison" | tee "$OUT/codec_speed_$CARD.md"
fi
echo "done in $((SECONDS - start)) s; results in $OUT/*_$CARD.*"
