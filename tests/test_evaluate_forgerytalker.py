"""`forgrepro evaluate forgerytalker` on synthetic MMTT: an official-layout (LAVIS key names) file exported from a
forgrepro ForgeryTalker scores exactly what the model itself scores under the official protocol (official generation
settings, PTB-tokenised BLEU/ROUGE-L/CIDEr, per-image mask metrics), predictions byte for byte; a DGM4 checkpoint
given to it is refused naming the file.

The model is a small ForgeryTalker in the official layout (MLP mask decoder, patchify stems; random weights), its
size given to the command as a model_config.json-style file, its tokenizer as a local folder.
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from forgrepro.cli import main

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:metric .* is nan")


def official_tiny():
    from forgrepro.methods.forgerytalker import forgerytalker_tiny
    from forgrepro.methods.forgerytalker_official import official_forgerytalker_config
    from forgrepro.models.explainer import ExplainerConfig
    from forgrepro.models.mask_decoder import MaskDecoderConfig
    from forgrepro.models.prompter import PrompterConfig, TagGateConfig
    c = forgerytalker_tiny()
    c = replace(c, vision=replace(c.vision, width=32, intermediate_size=64, image_size=56, patch_size=14),
                qformer=replace(c.qformer, hidden_size=32, intermediate_size=64, encoder_width=32, num_query_tokens=4),
                llm=ExplainerConfig(d_model=32, d_ff=64, d_kv=8, num_layers=1, num_decoder_layers=1, num_heads=4,
                                    dropout=0.0, vocab_size=None),
                prompter=PrompterConfig(image_size=56, patch_size=14, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64),
                mask_decoder=MaskDecoderConfig(kind="mlp", hidden_size=32, mlp_dim=64, num_heads=2, out_size=56),
                tag_gate=TagGateConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    return official_forgerytalker_config(c)


def test_exported_official_forgerytalker_scores_exactly_the_model(tmp_path, capsys):
    from forgrepro.data.mmtt import find_mmtt_split, read_mmtt
    from forgrepro.data.prompts import load_qformer_tokenizer, train_explanation_tokenizer
    from forgrepro.data.synth_mmtt import make_synth_mmtt
    from forgrepro.experiment import _flat
    from forgrepro.methods.forgerytalker import build_forgerytalker
    from forgrepro.methods.forgerytalker_official import evaluate_forgerytalker_model, export_official_forgerytalker_weights
    root = Path(make_synth_mmtt(tmp_path / "mmtt", n_train=8, n_val=2, n_test=6, image_size=64, workers=0))
    captions = [r.caption for r in read_mmtt(find_mmtt_split(root, "train"))]
    ltok = train_explanation_tokenizer(captions, vocab_size=200, out_dir=tmp_path / "tokenizer")
    cfg = official_tiny()
    torch.manual_seed(0)
    model = build_forgerytalker(cfg, llm_tokenizer=ltok, qformer_tokenizer=load_qformer_tokenizer(), load_weights=False)
    # directly: the model object, the official protocol (default generation: 5 beams, <= 100 tokens, >= 5)
    direct = evaluate_forgerytalker_model(model, root, "test", tmp_path / "direct", device="cpu", progress=False)
    export_official_forgerytalker_weights(model, tmp_path / "dff_export.safetensors")
    (tmp_path / "model_config.json").write_text(json.dumps(_flat(asdict(cfg))))
    rc = main(["evaluate", "forgerytalker", "--weights", str(tmp_path / "dff_export.safetensors"), "--mmtt", str(root),
               "--config", str(tmp_path / "model_config.json"), "--llm-tokenizer", str(tmp_path / "tokenizer"),
               "--device", "cpu", "--out", str(tmp_path / "cli")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    got = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert got == json.loads((tmp_path / "direct" / "metrics.json").read_text())
    assert (tmp_path / "cli" / "predictions.jsonl").read_text() == (tmp_path / "direct" / "predictions.jsonl").read_text()
    assert got["n_images"] == 6 and {"BLEU-4", "CIDEr", "ROUGE-L", "IoU", "Precision", "Recall"} <= set(got)
    env = json.loads((tmp_path / "cli" / "env.json").read_text())
    assert env["weights"]["layout"] == "official-lavis" and env["batch_size"] == 16
    print("ForgeryTalker: exported official-layout file == direct evaluation: "
          + " ".join(f"{k} {got[k]:.4f}" for k in ("BLEU-4", "ROUGE-L", "CIDEr", "IoU", "Precision", "Recall")))
    # a DGM4 checkpoint is not a ForgeryTalker one
    from forgrepro.methods.hammer import HAMMER_PRESETS, build_hammer, export_official_weights
    export_official_weights(build_hammer(HAMMER_PRESETS["tiny"]), tmp_path / "hammer.safetensors")
    rc = main(["evaluate", "forgerytalker", "--weights", str(tmp_path / "hammer.safetensors"), "--mmtt", str(root),
               "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 1 and f"{tmp_path / 'hammer.safetensors'}:" in err and "official key names with HAMMER's heads" in err, err
