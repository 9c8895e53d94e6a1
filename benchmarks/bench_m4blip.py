"""Paper-scale M4-BLIP training-step throughput against the plain-transformers/timm bound of its blocks.

    python benchmarks/bench_m4blip.py                      # CUDA GPU: paper scale, bf16 autocast, random weights
    python benchmarks/bench_m4blip.py --batch-size 48 --faces 2 --json out.json
    python benchmarks/bench_m4blip.py --smoke              # CPU: tiny preset, checks the code path only

The M4-BLIP step (forward, loss, backward, fused AdamW) runs as in training: bf16 autocast, SDPA attention,
channels-last EfficientNet, the frozen ViT-g (bf16 weights) under `no_grad`, the frozen Vicuna-7B-sized LLM
(bf16 weights) with only its input projection trained. Each block is then run on its own, in plain
transformers/timm, at the same batch and shapes:

* ViT-g/14 forward (no grad),
* EfficientNet-b4 training step at 224 px, per face crop (× faces per sample),
* Q-Former training step, for each of the three passes the step makes (queries + text over the ViT-g tokens,
  queries + text over the face tokens, text only),
* Vicuna-7B-sized forward at the step's sequence length, and forward + backward to the input embeddings (what
  training the projection in front of a frozen LLM costs).

The sum-of-blocks bound is the harmonic combination 1 / Σ_b (1 / throughput_b) of the per-sample block times.
It is printed twice: with the LLM forward only (the blocks named in the issue) and with the LLM forward +
input backward (the work the step must do). The ratio step / bound is the efficiency of everything M4-BLIP adds
around the blocks (heads, fusion, localiser, FCA, prompt assembly, optimiser over ~0.35 B trainable parameters).
Nothing downloads: all weights are random; the bundled bert-base-uncased WordPiece tokenizer stands in for
Vicuna's (its ids fit the 32,000-token vocabulary).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forgrepro.core import env_record, seed_everything                                     # noqa: E402
from forgrepro.data.batch import DGM4Batch                                                # noqa: E402
from forgrepro.methods.m4blip import (M4BlipTask, build_m4blip, m4blip_config, m4blip_loss,  # noqa: E402
                                      random_m4blip_batch)
from forgrepro.models.llm import PromptBuilder, wordpiece_tokenizer                        # noqa: E402
from forgrepro.task import Progress                                                       # noqa: E402

WORDS = ("the minister said on monday that the government will review the policy after protests in the capital "
         "city where thousands of people gathered outside parliament to demand change").split()


def sync(device: torch.device) -> None:
    if device.type == "cuda": torch.cuda.synchronize(device)


def seconds_per_call(fn, steps: int, warmup: int, device: torch.device) -> float:
    "Mean wall time of `fn()` after `warmup` untimed calls (device synchronised around the timed loop)."
    for _ in range(warmup): fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps): fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def make_batch(cfg, batch_size: int, faces: int, text_len: int, caption_words: int, device) -> DGM4Batch:
    "A label-consistent random batch at the config's image and face sizes, with realistic caption lengths."
    b = random_m4blip_batch(batch_size, seq_len=text_len, image_size=cfg.vision.image_size, face_size=cfg.face.face_size,
                            max_faces=faces, seed=0)
    g = torch.Generator().manual_seed(1)
    captions = [" ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (caption_words,), generator=g).tolist())
                for _ in range(batch_size)]
    b = replace(b, meta=[{**m, "text": c} for m, c in zip(b.meta, captions)],
                face_mask=torch.ones_like(b.face_mask))   # every crop real: the bound runs every crop too
    return b.to(device)


def m4blip_step_time(cfg, batch, args, device, tokenizer) -> tuple[float, dict]:
    "Seconds per M4-BLIP training step, plus facts about the run."
    with torch.device(device):
        model = build_m4blip(cfg, llm_tokenizer=tokenizer)
    model.to(device).train()
    if cfg.freeze_vision and model.global_encoder is not None: model.global_encoder.to(torch.bfloat16 if args.bf16 else torch.float32)
    task = M4BlipTask(cfg)
    groups = task.param_groups(model)
    opt = torch.optim.AdamW(groups, fused=device.type == "cuda")
    progress = Progress(epoch=1, step=0, steps_per_epoch=100)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            lo = m4blip_loss(model(batch), batch, progress, cfg)
        opt.zero_grad(set_to_none=True)
        lo.total.backward()
        opt.step()

    t = seconds_per_call(step, args.steps, args.warmup, device)
    builder: PromptBuilder = model.llm_head.builder
    q_len = builder.build(batch.texts).question_len
    seq = len(builder.prefix_ids) + cfg.qformer.num_query_tokens + len(builder.middle_ids) + int(q_len.max()) + builder.max_answer_len
    facts = {"trainable_params": sum(p.numel() for g in groups for p in g["params"]),
             "total_params": sum(p.numel() for p in model.parameters()), "llm_seq_len": seq,
             "local_keys": 1 + batch.faces.shape[1] * _face_tokens(model), "global_keys": 1 + cfg.vision.num_patches}
    del model, opt
    return t, facts


def _face_tokens(model) -> int:
    s = model.cfg.face.face_size
    with torch.no_grad():
        p = next(model.face_encoder.parameters())
        fmap = model.face_encoder.backbone.forward_features(torch.zeros(1, 3, s, s, device=p.device, dtype=p.dtype))
    return fmap.shape[-2] * fmap.shape[-1]


def block_times(cfg, batch, facts, args, device) -> dict[str, float]:
    "Seconds per sample of each plain block at the step's batch and shapes."
    import timm
    from transformers import Blip2VisionConfig, Blip2VisionModel, InstructBlipQFormerModel, LlamaForCausalLM
    B, F_ = batch.image.shape[0], batch.faces.shape[1]
    amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    low = torch.bfloat16 if args.bf16 else torch.float32
    out = {}

    # ViT-g/14 forward, frozen (bf16 weights), no grad
    v = cfg.vision
    vit_cfg = Blip2VisionConfig(hidden_size=v.width, intermediate_size=v.intermediate_size, num_hidden_layers=v.depth,
                                num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size)
    vit_cfg._attn_implementation = "sdpa"
    with torch.device(device): vit = Blip2VisionModel(vit_cfg).to(low).eval()
    def vit_fwd():
        with torch.no_grad(), amp(): vit(pixel_values=batch.image)
    out["vit_fwd"] = seconds_per_call(vit_fwd, args.steps, args.warmup, device) / B
    del vit

    # EfficientNet train step on B·F crops (channels-last, bf16 autocast, fused AdamW)
    eff = timm.create_model(cfg.face.arch, pretrained=False, num_classes=0, global_pool="").to(device)
    eff = eff.to(memory_format=torch.channels_last).train()
    eopt = torch.optim.AdamW(eff.parameters(), fused=device.type == "cuda")
    crops = batch.faces.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    def eff_train():
        with amp(): loss = eff.forward_features(crops).float().mean()
        eopt.zero_grad(set_to_none=True); loss.backward(); eopt.step()
    out["effnet_train"] = seconds_per_call(eff_train, args.steps, args.warmup, device) / B   # all F crops of a sample
    del eff, eopt, crops

    # Q-Former train step: the three passes the step makes
    q = cfg.qformer
    with torch.device(device):
        qf = InstructBlipQFormerModel(q.hf_config()).train()
        queries = torch.nn.Parameter(torch.zeros(1, q.num_query_tokens, q.hidden_size))
    qopt = torch.optim.AdamW([*qf.parameters(), queries], fused=device.type == "cuda")
    ids, am = batch.input_ids, batch.attention_mask
    self_mask = torch.cat([am.new_ones(B, q.num_query_tokens), am], 1).bool()[:, None, None, :]
    text_mask = am.bool()[:, None, None, :]
    for name, keys in (("qformer_global", facts["global_keys"]), ("qformer_local", facts["local_keys"]), ("qformer_text", 0)):
        enc = torch.randn(B, keys, q.encoder_width, device=device, dtype=low) if keys else None
        def qf_train():
            with amp():
                if enc is None: h = qf(input_ids=ids, attention_mask=text_mask).last_hidden_state
                else: h = qf(input_ids=ids, attention_mask=self_mask, query_embeds=queries.expand(B, -1, -1),
                             encoder_hidden_states=enc).last_hidden_state
                loss = h.float().mean()
            qopt.zero_grad(set_to_none=True); loss.backward(); qopt.step()
        out[name] = seconds_per_call(qf_train, args.steps, args.warmup, device) / B
    del qf, qopt

    # Vicuna-7B-sized decoder at the step's sequence length: forward, and forward + backward to the inputs
    with torch.device(device):
        llm = LlamaForCausalLM._from_config(cfg.llm.hf_config(), dtype=low).train()
    llm.requires_grad_(False)
    emb = torch.randn(B, facts["llm_seq_len"], cfg.llm.hidden_size, device=device, dtype=low) * 0.02
    def llm_fwd():
        with torch.no_grad(), amp(): llm(inputs_embeds=emb, use_cache=False)
    out["llm_fwd"] = seconds_per_call(llm_fwd, args.steps, args.warmup, device) / B
    emb_g = emb.clone().requires_grad_(True)
    def llm_fwd_bwd():
        with amp(): loss = llm(inputs_embeds=emb_g, use_cache=False).logits[:, -8:].float().mean()
        loss.backward(); emb_g.grad = None
    out["llm_fwd_bwd_input"] = seconds_per_call(llm_fwd_bwd, args.steps, args.warmup, device) / B
    del llm
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--faces", type=int, default=1, help="face crops per sample (all real)")
    ap.add_argument("--text-len", type=int, default=40, help="WordPiece tokens of the news text (DGM4: ≤ 30 words)")
    ap.add_argument("--caption-words", type=int, default=20, help="caption words in the LLM prompt")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--llm-checkpointing", action="store_true", help="gradient checkpointing in the LLM (memory)")
    ap.add_argument("--tokenizer", default=None, help="WordPiece tokenizer folder (default: the bundled one)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny preset: check the code path, no meaningful numbers")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("bench_m4blip: SKIPPED — paper-scale throughput needs a CUDA GPU (use --smoke for a CPU code-path check)")
        return {"skipped": True}
    device = torch.device("cuda" if cuda and not args.smoke else "cpu")
    args.bf16 = device.type == "cuda"
    if args.smoke:
        args.batch_size, args.faces, args.steps, args.warmup, args.text_len = min(args.batch_size, 4), 2, 1, 1, 12
        torch.set_num_threads(1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    seed_everything(0)
    warnings.filterwarnings("ignore", message=".*(RANDOMLY|WordPiece stands in).*")
    cfg = m4blip_config("tiny" if args.smoke else "paper",
                        overrides={"face.max_faces": args.faces, "llm.gradient_checkpointing": args.llm_checkpointing})
    tokenizer = wordpiece_tokenizer(args.tokenizer)
    batch = make_batch(cfg, args.batch_size, args.faces, args.text_len, args.caption_words, device)

    step_s, facts = m4blip_step_time(cfg, batch, args, device, tokenizer)
    if device.type == "cuda":
        facts["peak_mem_gib_step"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device)
    blocks = block_times(cfg, batch, facts, args, device)
    B = args.batch_size
    step_tp = B / step_s
    common = blocks["vit_fwd"] + blocks["effnet_train"] + blocks["qformer_global"] + blocks["qformer_local"] + blocks["qformer_text"]
    bound_issue, bound_matched = 1 / (common + blocks["llm_fwd"]), 1 / (common + blocks["llm_fwd_bwd_input"])

    names = {"vit_fwd": f"ViT-g/14 {cfg.vision.image_size}px fwd (no grad)",
             "effnet_train": f"{cfg.face.arch} {cfg.face.face_size}px train (x{args.faces} crops)",
             "qformer_global": f"Q-Former train, {facts['global_keys']} ViT keys",
             "qformer_local": f"Q-Former train, {facts['local_keys']} face keys",
             "qformer_text": "Q-Former train, text only",
             "llm_fwd": f"LLM fwd, T={facts['llm_seq_len']}",
             "llm_fwd_bwd_input": f"LLM fwd + input bwd, T={facts['llm_seq_len']}"}
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} | batch {B} | "
          f"{'bf16 autocast' if args.bf16 else 'fp32'} | {'tiny smoke' if args.smoke else 'paper scale'}")
    print(f"{'block':52s} {'samples/s':>11s} {'ms/sample':>10s}")
    for k, v in blocks.items(): print(f"{names[k]:52s} {1 / v:11.1f} {1e3 * v:10.3f}")
    print(f"{'sum-of-blocks bound, LLM fwd (issue blocks)':52s} {bound_issue:11.1f} {1e3 / bound_issue:10.3f}")
    print(f"{'sum-of-blocks bound, LLM fwd + input bwd (matched)':52s} {bound_matched:11.1f} {1e3 / bound_matched:10.3f}")
    print(f"{'M4-BLIP training step':52s} {step_tp:11.1f} {1e3 / step_tp:10.3f}")
    print(f"ratio step / bound: {step_tp / bound_issue:.1%} (issue blocks), {step_tp / bound_matched:.1%} (matched)")
    print(f"trainable params {facts['trainable_params'] / 1e6:.1f} M of {facts['total_params'] / 1e6:.1f} M"
          + (f"; peak memory of the step {facts['peak_mem_gib_step']:.1f} GiB" if "peak_mem_gib_step" in facts else ""))
    res = {"batch_size": B, "faces": args.faces, "smoke": args.smoke, "step_samples_per_s": step_tp,
           "block_samples_per_s": {k: 1 / v for k, v in blocks.items()}, "bound_issue": bound_issue,
           "bound_matched": bound_matched, "ratio_issue": step_tp / bound_issue, "ratio_matched": step_tp / bound_matched,
           **facts, "env": env_record(device)}
    if args.json: Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    main()
