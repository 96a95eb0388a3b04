"""Florence-2-base architecture (randomly initialised, nothing downloaded) with meldflow's
classifier heads: training samples/s, peak memory and model FLOPs utilisation per batch
size, bf16 autocast against fp32 (the naive baseline) measured in the same run, and the
levers towards a higher MFU: the attention kernel (--attn), fused AdamW (--fused),
torch.compile (--compile). --loss-check N trains N steps with the levers and N without
(eager, same seed, same batches) and prints the largest loss difference.

Prepared for a short GPU lease (a few minutes in all):
    .venv/bin/python benchmarks/bench_gpu.py [--batches 8 16 32] [--steps 10]
    .venv/bin/python benchmarks/bench_gpu.py --batches 32 --no-fp32 --fused --compile \
        --loss-check 50
Smoke test on a CPU (tiny sizes, nothing meaningful):
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --batches 1 --steps 1 --no-fp32
"""

from __future__ import annotations

import argparse
import time


def base_config(attn: str, dropout: bool = True):
    """Florence-2-base's shapes: DaViT (1,1,9,1 blocks; 128..1024 wide) + BART-base.

    The vocabulary includes the image token (id 51289), which the embedding looks up.
    ``dropout=False``: no dropout or drop path, so that two runs can be compared step by
    step (a compiled graph draws its dropout masks from another random stream).
    """
    from transformers import Florence2Config

    config = Florence2Config(
        vision_config=dict(depths=[1, 1, 9, 1], embed_dim=[128, 256, 512, 1024],
                           num_heads=[4, 8, 16, 32], num_groups=[4, 8, 16, 32],
                           window_size=12, projection_dim=768),
        text_config=dict(vocab_size=51290, d_model=768, encoder_layers=6, decoder_layers=6,
                         encoder_attention_heads=12, decoder_attention_heads=12,
                         encoder_ffn_dim=3072, decoder_ffn_dim=3072),
    )
    config._attn_implementation = attn
    if not dropout:
        config.vision_config.drop_path_rate = 0.0
        config.text_config.dropout = 0.0
    return config


def build(args, levers: bool = True):
    """Florence-2-base shapes under meldflow's classifier, its optimiser, and one training
    step (meldflow's own loss) as a function of (inputs, labels, bf16) returning the loss.
    ``levers``: with --attn/--fused/--compile as given, else eager attention and plain
    AdamW (the baseline of --loss-check)."""
    import torch
    from transformers import Florence2ForConditionalGeneration

    from meldflow.labels import EMOTIONS
    from meldflow.training.classifier import EmotionClassifier
    from meldflow.training.loop import classification_loss

    device = torch.device(args.device)
    torch.manual_seed(0)
    florence = Florence2ForConditionalGeneration(base_config(
        args.attn if levers else "eager", dropout=not args.loss_check))
    if args.grad_checkpointing:
        florence.activation_checkpointing_enable()
    model = EmotionClassifier(florence).to(device).train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5,
                              fused=bool(levers and args.fused) or None)
    forward = torch.compile(model) if levers and args.compile else model
    weights = dict.fromkeys(EMOTIONS, 1.0)

    def step(inputs, labels, bf16):
        item = {"batch": inputs, "emotion": labels.tolist(),
                "sentiment": (labels % 3).tolist(), "weight": [1.0] * len(labels)}
        loss = classification_loss(forward, item, weights, len(labels), len(labels), device,
                                   bf16)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        return loss.detach()

    return model, florence.config.image_token_id, step, device


def loss_check(args) -> None:
    """The first ``--loss-check`` losses with the levers against eager execution: same
    initial weights, same batches, bf16 autocast (what the levers are for), no dropout."""
    import torch

    losses = {}
    for levers in (False, True):
        _, image_id, step, device = build(args, levers)
        gen = torch.Generator().manual_seed(1)
        n = args.batches[-1]
        out = []
        for _ in range(args.loss_check):
            inputs = random_batch(n, args, image_id, device, gen)
            labels = torch.randint(0, 7, (n,), generator=gen).to(device)
            out.append(float(step(inputs, labels, True)))
        losses[levers] = out
    diff = [abs(a - b) for a, b in zip(losses[False], losses[True], strict=True)]
    print(f"loss check, {args.loss_check} steps of batch {args.batches[-1]} (bf16): eager "
          f"{losses[False][0]:.4f} -> {losses[False][-1]:.4f}, with the levers "
          f"{losses[True][0]:.4f} -> {losses[True][-1]:.4f}; largest difference "
          f"{max(diff):.4f} (step {diff.index(max(diff))}), mean {sum(diff) / len(diff):.4f}")


def random_batch(n: int, args, image_id: int, device, gen=None):
    import torch

    image_tokens = (args.image_size // 32) ** 2 + 1
    text = torch.randint(10, 50000, (n, args.text_tokens), generator=gen)
    ids = torch.cat([torch.full((n, image_tokens), image_id), text], 1).to(device)
    pixels = torch.randn(n, 3, args.image_size, args.image_size, generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": pixels.to(device)}


def seconds_per_step(step, inputs, labels, bf16: bool, steps: int, device) -> float:
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step(inputs, labels, bf16)  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step(inputs, labels, bf16)
    sync()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=768)
    ap.add_argument("--text-tokens", type=int, default=48, help="prompt tokens per sample")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the device's dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--no-fp32", action="store_true", help="skip the fp32 baseline")
    ap.add_argument("--attn", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"],
                    help="attention kernel (transformers' attn_implementation)")
    ap.add_argument("--fused", action="store_true", help="fused AdamW (one kernel a step)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--loss-check", type=int, default=0, metavar="N",
                    help="compare N steps' losses with the levers against eager; no timing")
    args = ap.parse_args()
    if args.loss_check:
        return loss_check(args)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model, image_id, step, device = build(args)
    params = sum(p.numel() for p in model.parameters())
    # FLOPs are the model's, counted on an uncompiled copy (the counter does not see
    # inside a compiled graph).
    count_step = build(args, levers=False)[2] if args.compile else step
    print(f"Florence-2-base shapes, random init, {params / 1e6:.0f}M parameters, "
          f"{args.image_size}px ({(args.image_size // 32) ** 2 + 1} image tokens) + "
          f"{args.text_tokens} text tokens, {device}, grad checkpointing "
          f"{'on' if args.grad_checkpointing else 'off'}, attention {args.attn}, fused AdamW "
          f"{'on' if args.fused else 'off'}, compile {'on' if args.compile else 'off'}")
    print(f"{'batch':>5} {'precision':>9} {'samples/s':>10} {'vs fp32':>8} {'peak GiB':>9} "
          f"{'MFU':>6}")
    for n in args.batches:
        inputs, labels = random_batch(n, args, image_id, device), torch.randint(0, 7, (n,),
                                                                               device=device)
        with FlopCounterMode(display=False) as counter:
            count_step(inputs, labels, False)
        flops, rates = counter.get_total_flops(), {}
        for precision in (["bf16"] if args.no_fp32 else ["fp32", "bf16"]):
            try:
                dt = seconds_per_step(step, inputs, labels, precision == "bf16", args.steps,
                                      device)
            except torch.OutOfMemoryError:
                print(f"{n:5d} {precision:>9} out of memory")
                continue
            rates[precision] = n / dt
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0
            mfu = flops / dt / (args.peak_tflops * 1e12)
            ratio = f"{rates[precision] / rates['fp32']:.2f}x" if "fp32" in rates else "-"
            print(f"{n:5d} {precision:>9} {rates[precision]:10.1f} {ratio:>8} {peak:9.1f} "
                  f"{mfu:6.1%}", flush=True)
    print("MFU: FLOPs of one training step (torch's FlopCounterMode) / step time / peak.")


if __name__ == "__main__":
    main()
