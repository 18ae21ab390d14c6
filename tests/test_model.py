"""The tiny model is a real LLaVA: saved and loaded by the standard calls, LoRA on the language model."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from viker.collate import Collator, model_inputs
from viker.data.examples import finetune_examples
from viker.errors import VikerError
from viker.model import LoraSettings, apply_lora, language_model_linear_layers, load_model, quiet_peft


def test_saved_tiny_model_loads_through_auto_classes_with_identical_outputs(tiny, tiny_dir, bench_dir):
    model, processor = tiny
    loaded, loaded_processor = load_model(tiny_dir, device="cpu")
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    assert json.loads((tiny_dir / "config.json").read_text())["model_type"] == "llava"
    examples = finetune_examples(bench_dir)[:4]
    batch = Collator(processor)(examples)
    again = Collator(loaded_processor)(examples)
    assert torch.equal(batch["input_ids"], again["input_ids"])
    assert torch.equal(batch["pixel_values"], again["pixel_values"])
    with torch.no_grad():
        assert torch.allclose(model(**model_inputs(batch)).logits, loaded(**model_inputs(again)).logits, atol=1e-5)


def test_only_a_model_the_tiny_builders_made_takes_the_tiny_presets(tiny_dir, tmp_path):
    """A real model whose config says "tiny" somewhere (a size, a name) was given the tiny model's unlearning
    presets, and unlearning took every question of the benchmark, the evaluation's too, for what it had learned."""
    from viker.model import is_tiny_model

    assert is_tiny_model(tiny_dir)
    real = tmp_path / "real"
    real.mkdir()
    (real / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {"size": "tiny"},
                                                  "_name_or_path": "tiny-llava"}))
    assert not is_tiny_model(real)
    (real / "config.json").write_text("[1, 2]")
    assert not is_tiny_model(real)


def test_a_run_saved_as_an_adapter_loads_and_answers_as_the_merged_run(tiny_dir, bench_dir, tmp_path, monkeypatch):
    """`viker unlearn --save adapter` keeps only the LoRA adapter; `viker eval --model RUN` and
    load_model(RUN) put it on the base model its adapter_config.json names, from any working folder
    (the base model was given by a relative path)."""
    from viker.cli import main

    monkeypatch.chdir(tiny_dir.parent)
    common = ["unlearn", "--model", tiny_dir.name, "--data", str(bench_dir), "--method", "ga", "--max-steps", "3",
              "--lr", "1e-2"]
    assert main([*common, "--save", "adapter", "--out", str(tmp_path / "adapter")]) == 0
    assert main([*common, "--out", str(tmp_path / "merged")]) == 0
    monkeypatch.chdir(tmp_path)
    assert (tmp_path / "adapter" / "model" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "model" / "model.safetensors").exists()
    # --save auto on float32 weights merges, which loses nothing there
    assert (tmp_path / "merged" / "model" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["saved"] == "merged"
    (adapter, processor), (merged, _), (base, _) = (load_model(tmp_path / name, device="cpu")
                                                    for name in ("adapter", "merged", tiny_dir))
    batch = model_inputs(Collator(processor)(finetune_examples(bench_dir)[:4]))
    with torch.no_grad():
        got, want, before = adapter(**batch).logits, merged(**batch).logits, base(**batch).logits
    assert (want - before).abs().max() > 1e-3  # the unlearning changed the model ...
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)  # ... and the adapter carries the whole change
    assert main(["eval", "--model", str(tmp_path / "adapter"), "--data", str(bench_dir), "--max-new-tokens", "4",
                 "--retain-limit", "2", "--only", "forget:multiple_choice", "--out", str(tmp_path / "adapter")]) == 0
    assert "forget_acc" in json.loads((tmp_path / "adapter" / "metrics.json").read_text())
    # unlearning again from the adapter run takes the tiny model's presets, as from its base model
    assert main([*common[:2], str(tmp_path / "adapter"), *common[3:], "--out", str(tmp_path / "again")]) == 0
    presets = [json.loads((tmp_path / run / "config.json").read_text())["unlearn"]["train"]
               for run in ("merged", "again")]
    assert presets[0] == presets[1] and presets[0]["epochs"] == 8  # the tiny preset's, not a 7B model's 5
    # every weight of the merged model trains, as any model loaded: peft froze the base it merged into
    assert all(p.requires_grad for p in adapter.parameters())
    assert main([*common[:2], str(tmp_path / "adapter"), *common[3:7], "--tuning", "full", "--max-steps", "1",
                 "--out", str(tmp_path / "full")]) == 0
    plain = tmp_path / "peft_adapter"  # an adapter saved by peft alone: no processor files beside it
    plain.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(tmp_path / "adapter" / "model" / name, plain / name)
    model, processor = load_model(plain, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scale, lost", [(1e-7, (0.999, 1.0)), (1e-1, (0.0, 0.01))])
def test_merge_loss_is_what_merging_into_bf16_weights_rounds_away(tiny, scale, lost):
    """An update under half a bf16 weight's last bit vanishes in the merge, a large one keeps nearly all of
    itself; merge_loss says how much, before merging, as the merge itself then shows."""
    import copy

    from viker.model import merge_loss

    model = apply_lora(copy.deepcopy(tiny[0]).to(torch.bfloat16), LoraSettings())
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=scale)
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    before = {id(m): m.get_base_layer().weight.detach().float().clone() for m in layers}
    delta = {id(m): (m.lora_B["default"].weight.detach().float() @ m.lora_A["default"].weight.detach().float())
             * m.scaling["default"] for m in layers}
    predicted = merge_loss(model)
    assert lost[0] <= predicted <= lost[1]
    for m in layers:
        m.merge()
    actual = sum(float((m.get_base_layer().weight.detach().float() - before[id(m)] - delta[id(m)]).square().sum())
                 for m in layers) / sum(float(d.square().sum()) for d in delta.values())
    assert predicted == pytest.approx(actual ** 0.5, rel=1e-3)
    assert merge_loss(apply_lora(copy.deepcopy(tiny[0]), LoraSettings())) is None  # float32: nothing to measure


@pytest.mark.parametrize("config", [{"target_modules": ["emb"]}, {"target_modules": ["lin"], "use_dora": True}])
def test_merge_loss_claims_no_figure_for_lora_it_does_not_measure(config):
    """LoRA on an embedding, or DoRA, merges otherwise than a plain LoRA layer: no figure, rather than a wrong one."""
    from peft import LoraConfig, get_peft_model

    from viker.model import merge_loss

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.emb = torch.nn.Linear(8, 8), torch.nn.Embedding(10, 8)

    with quiet_peft():
        model = get_peft_model(Toy().to(torch.bfloat16), LoraConfig(**config))
    assert merge_loss(model) is None
    with quiet_peft():
        plain = get_peft_model(Toy().to(torch.bfloat16), LoraConfig(target_modules=["lin"]))
    assert merge_loss(plain) == 0.0  # B starts at zero: nothing to lose yet, and measured


def test_save_auto_keeps_what_a_merge_would_round_away_and_what_a_resumed_run_chose():
    """--save auto merges float32 weights and keeps the adapter of 16-bit or sharded ones; a resumed run goes on
    with what it chose when it started, on whatever weights it resumes; a model that is itself an adapter run
    is saved merged, and under FSDP or DeepSpeed, where it could not be, refused."""
    from viker.presets import TINY_UNLEARN
    from viker.unlearn import UnlearnConfig, saves_merged

    auto = UnlearnConfig(model="m", data="d", method="ga", out="o", train=TINY_UNLEARN)  # as a run resolves it
    assert auto.lora.merge is None

    def choice(dtype=torch.float32, sharded=False, chosen=None, on_adapter=False, cfg=auto, wraps=False):
        return saves_merged(cfg, wraps, sharded, chosen, lambda: dtype, on_adapter)

    assert choice() is True and choice(torch.bfloat16) is False and choice(torch.float16) is False
    assert choice(sharded=True) is False
    assert choice(torch.float32, chosen="adapter") is False and choice(torch.bfloat16, chosen="merged") is True
    assert choice(torch.bfloat16, on_adapter=True) is True
    assert choice(torch.bfloat16, wraps=True) is True  # CAGUL trains no adapter: nothing to choose
    with pytest.raises(VikerError, match="under FSDP or DeepSpeed a LoRA run saves only its adapter.*use DDP"):
        choice(sharded=True, on_adapter=True)
    merged = replace(auto, lora=LoraSettings(merge=True))
    assert choice(torch.bfloat16, cfg=merged) is True  # asked for: merged, with its loss recorded
    with pytest.raises(VikerError, match="--save merged: under FSDP or DeepSpeed only the adapter"):
        choice(sharded=True, cfg=merged)


def test_an_adapter_whose_merge_is_not_measured_is_evaluated_unmerged(tiny, tiny_dir, tmp_path):
    """DoRA merges otherwise than plain LoRA, so merge_loss gives no figure: on 16-bit weights evaluation keeps
    such an adapter unmerged rather than merge it blind."""
    import copy

    from peft import LoraConfig, PeftModel, get_peft_model

    with quiet_peft():
        dora = get_peft_model(copy.deepcopy(tiny[0]), LoraConfig(target_modules=language_model_linear_layers(tiny[0]),
                                                                use_dora=True))
    dora.peft_config["default"].base_model_name_or_path = str(tiny_dir)
    dora.save_pretrained(tmp_path / "dora")
    evaluated, _ = load_model(tmp_path / "dora", device="cpu", dtype="bfloat16", merge_adapter=False)
    assert isinstance(evaluated, PeftModel)
    assert not isinstance(load_model(tmp_path / "dora", device="cpu", dtype="float32", merge_adapter=False)[0],
                          PeftModel)


def test_a_bf16_run_says_what_its_merge_lost_and_is_evaluated_whole_as_an_adapter(tiny_dir, bench_dir, tmp_path,
                                                                                  capsys, monkeypatch):
    """Saved merged, a bf16 run records the share of its update the merge rounded away (merge.json) and warns
    of it; saved as an adapter, evaluation applies the adapter unmerged, so the model evaluated is the model
    trained, not its rounded merge."""
    from peft import PeftModel

    from viker.cli import main

    common = ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "ga", "--max-steps", "2",
              "--lr", "1e-5", "--dtype", "bfloat16", "--device", "cpu"]
    assert main([*common, "--save", "merged", "--out", str(tmp_path / "merged")]) == 0
    record = json.loads((tmp_path / "merged" / "model" / "merge.json").read_text())
    assert record["update_lost"] > 0.05
    said = capsys.readouterr().err
    assert f"rounds away {100 * record['update_lost']:.0f}% of it" in said and "--save adapter keeps the update" in said
    # --save auto: on bf16 weights, the adapter (an --out given with its trailing slash)
    assert main([*common, "--out", f"{tmp_path / 'adapter'}/"]) == 0
    assert (tmp_path / "adapter" / "model" / "adapter_config.json").is_file()
    printed = capsys.readouterr()
    assert not (tmp_path / "adapter" / "model" / "merge.json").exists() and "rounds away" not in printed.err
    assert f"written to {tmp_path / 'adapter' / 'model'} as its LoRA adapter" in printed.out  # one slash
    assert [json.loads((tmp_path / run / "config.json").read_text())["saved"] for run in ("merged", "adapter")] == \
        ["merged", "adapter"]

    # the same seed trains the same update: the merged run's weights moved by it, less what the merge lost
    base, _ = load_model(tiny_dir, device="cpu", dtype="bfloat16")
    merged, _ = load_model(tmp_path / "merged", device="cpu", dtype="bfloat16")
    with quiet_peft():
        trained = PeftModel.from_pretrained(base, tmp_path / "adapter" / "model")
    lost = total = 0.0
    for name, m in trained.named_modules():
        if hasattr(m, "lora_A") and "default" in m.lora_A:
            weight = m.get_base_layer().weight.detach().float()
            delta = (m.lora_B["default"].weight.detach().float() @ m.lora_A["default"].weight.detach().float()
                     * m.scaling["default"])
            added = merged.get_submodule(name.removeprefix("base_model.model.")).weight.detach().float() - weight
            lost += float((added - delta).square().sum())
            total += float(delta.square().sum())
    assert (lost / total) ** 0.5 == pytest.approx(record["update_lost"], rel=1e-3)

    evaluated, processor = load_model(tmp_path / "adapter", device="cpu", dtype="bfloat16", merge_adapter=False)
    assert isinstance(evaluated, PeftModel) and not any(getattr(m, "merged", False) for m in evaluated.modules())
    capsys.readouterr()
    as_merged, _ = load_model(tmp_path / "adapter", device="cpu", dtype="bfloat16")  # as a run to train on loads it
    assert not isinstance(as_merged, PeftModel)
    assert f"merging this LoRA adapter into bfloat16 weights rounds away {100 * record['update_lost']:.0f}% of its " \
        "update" in capsys.readouterr().err
    float32, _ = load_model(tmp_path / "adapter", device="cpu", dtype="float32", merge_adapter=False)
    assert not isinstance(float32, PeftModel)  # float32 holds the update merged
    assert main([*common, "--lr", "0.5", "--out", str(tmp_path / "large")]) == 0  # an update bf16 holds merged
    large, _ = load_model(tmp_path / "large", device="cpu", dtype="bfloat16", merge_adapter=False)
    assert not isinstance(large, PeftModel)
    capsys.readouterr()  # a run on an adapter run is saved merged: what keeps its update whole is float32
    assert main([*common[:2], str(tmp_path / "adapter"), *common[3:], "--out", str(tmp_path / "on-adapter")]) == 0
    said = capsys.readouterr().err
    assert "rounds away" in said and "--dtype float32 keeps the update whole (a run on an adapter run is saved " \
        "merged)" in said and "--save adapter" not in said
    batch = model_inputs(Collator(processor)(finetune_examples(bench_dir)[:4]))
    with torch.no_grad():
        torch.testing.assert_close(evaluated(**batch).logits, trained(**batch).logits, atol=0, rtol=0)
        assert not torch.equal(as_merged(**batch).logits, trained(**batch).logits)  # what a merge would evaluate

    import viker.eval.run

    seen = []
    real = viker.eval.run.evaluate
    monkeypatch.setattr(viker.eval.run, "evaluate", lambda model, *a, **kw: seen.append(model) or real(model, *a, **kw))
    assert main(["eval", "--model", str(tmp_path / "adapter"), "--data", str(bench_dir), "--dtype", "bfloat16",
                 "--device", "cpu", "--only", "forget:multiple_choice", "--out", str(tmp_path / "adapter")]) == 0
    assert isinstance(seen[0], PeftModel)  # viker eval scores the update as trained, and says so
    recorded = json.loads((tmp_path / "adapter" / "eval_config.json").read_text())
    # and records what it ran in: the weights' dtype (LoRA's own stay float32) and the device
    assert (recorded["adapter"], recorded["weights_dtype"], recorded["device"]) == ("applied unmerged", "bfloat16",
                                                                                    "cpu")


def test_tokenizer_round_trips_benchmark_text_exactly(tiny, bench_dir):
    tok = tiny[1].tokenizer
    for ex in finetune_examples(bench_dir)[:50]:
        ids = tok(ex.answer, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == ex.answer


def test_lora_targets_only_the_language_model(tiny):
    model, _ = tiny
    targets = language_model_linear_layers(model)
    assert targets and all("language_model" in t for t in targets)
    assert not any("vision" in t or "projector" in t or "lm_head" in t for t in targets)
    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8))
    try:
        trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
        assert all("language_model" in n for n in trainable)
    finally:
        peft_model.unload()  # give the shared fixture back unwrapped


def test_a_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(VikerError, match="not a model folder"):
        load_model(tmp_path)


def test_a_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(VikerError, match="no such model folder"):
        load_model(tmp_path / "nowhere")


def test_a_checkpoint_of_the_older_layout_loads_and_collates_as_the_current_one(tiny_dir, bench_dir, tmp_path):
    # The chat template only in tokenizer_config.json, no padding token (as Llama-based checkpoints ship).
    older = tmp_path / "older"
    shutil.copytree(tiny_dir, older)
    template = (older / "chat_template.jinja").read_text()
    (older / "chat_template.jinja").unlink()
    settings = json.loads((older / "tokenizer_config.json").read_text())
    del settings["pad_token"]
    (older / "tokenizer_config.json").write_text(json.dumps(settings | {"chat_template": template}))
    backend = json.loads((older / "tokenizer.json").read_text())  # a tokenizer that padded once names its pad
    (older / "tokenizer.json").write_text(json.dumps(backend | {"padding": None}))
    _, processor = load_model(older, device="cpu")
    assert processor.chat_template is None and processor.tokenizer.pad_token == processor.tokenizer.eos_token
    _, current = load_model(tiny_dir, device="cpu")
    examples = finetune_examples(bench_dir)[:4]
    got, want = Collator(processor)(examples), Collator(current)(examples)
    assert torch.equal(got["labels"], want["labels"]) and torch.equal(got["attention_mask"], want["attention_mask"])


def test_a_weights_file_cut_short_is_a_clear_error(tiny_dir, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(tiny_dir, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(VikerError, match="cut: cannot load model"):
        load_model(cut, device="cpu")


def test_a_checkpoint_lacking_some_weights_is_refused_not_filled_at_random(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    lacking = tmp_path / "lacking"
    shutil.copytree(tiny_dir, lacking)
    weights = load_file(lacking / "model.safetensors")
    dropped = [k for k in weights if ".layers.1.mlp." in k and "language_model" in k]
    assert dropped
    save_file({k: v for k, v in weights.items() if k not in dropped}, lacking / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(VikerError, match=rf"lacking: its checkpoint lacks {len(dropped)} of the model's weights "
                                         r"\(model\.language_model\.layers\.1\.mlp\."):
        load_model(lacking, device="cpu")


def test_an_adapter_lacking_some_of_its_weights_is_refused_not_started_anew(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    model, _ = load_model(tiny_dir, device="cpu")
    with quiet_peft():
        apply_lora(model, LoraSettings(r=4, merge=False)).save_pretrained(tmp_path / "adapter")
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    kept = {k: v for k, v in weights.items() if ".layers.1." not in k}
    assert 0 < len(kept) < len(weights)
    save_file(kept, tmp_path / "adapter" / "adapter_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(VikerError, match=f"adapter: the adapter lacks {len(weights) - len(kept)} of its weights"):
        load_model(tmp_path / "adapter", device="cpu")


def _adapter(tiny_dir, out, r=4):
    """A LoRA adapter on the model in ``tiny_dir``, saved by peft alone, whose update is not zero."""
    model, _ = load_model(tiny_dir, device="cpu")
    with quiet_peft():
        adapted = apply_lora(model, LoraSettings(r=r, merge=False))
    for name, weight in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.05)
    adapted.save_pretrained(out)
    return out


def _base_named(adapter, base) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": str(base)}))


def test_an_adapter_on_an_adapter_or_on_another_architecture_is_refused(tiny_dir, tmp_path):
    """Loaded as it is, an adapter whose base is another adapter replaced that one without a word, and one on a
    base of another architecture failed deep inside the first batch."""
    inner, outer = _adapter(tiny_dir, tmp_path / "inner"), _adapter(tiny_dir, tmp_path / "outer")
    _base_named(outer, inner)
    with pytest.raises(VikerError, match=f"outer: its base model, {inner}, is itself a LoRA adapter"):
        load_model(outer, device="cpu")
    other = shutil.copytree(tiny_dir, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"architectures": ["Qwen2VLForConditionalGeneration"]}))
    _base_named(outer, other)
    with pytest.raises(VikerError, match="outer: an adapter trained on a LlavaForConditionalGeneration, and its base "
                                         "model .* is a Qwen2VLForConditionalGeneration"):
        load_model(outer, device="cpu")


def test_another_models_processor_beside_the_weights_is_refused_in_one_line(tiny_dir, tmp_path):
    more = shutil.copytree(tiny_dir, tmp_path / "more_tokens")  # a tokenizer larger than the embeddings
    _, processor = load_model(tiny_dir, device="cpu")
    processor.tokenizer.add_tokens([f"extra{i}" for i in range(40)])
    processor.save_pretrained(more)
    with pytest.raises(VikerError, match=r"more_tokens: its tokenizer has \d+ tokens and the model embeds \d+: the "
                                         "processor is another model's"):
        load_model(more, device="cpu")
    larger = shutil.copytree(tiny_dir, tmp_path / "larger_images")  # images of another size than the model's
    settings = json.loads((larger / "processor_config.json").read_text())
    settings["image_processor"] |= {"crop_size": {"height": 48, "width": 48}, "size": {"shortest_edge": 48}}
    (larger / "processor_config.json").write_text(json.dumps(settings))
    with pytest.raises(VikerError, match=r"larger_images: the model cannot take what its processor makes \(.*\); "
                                         "processor and model come from different configurations"):
        load_model(larger, device="cpu")
    load_model(larger, device="cpu", check_inputs=False)  # a training run checks on its own first example instead


def test_weights_of_other_shapes_than_the_config_says_are_a_clear_error(tiny_dir, tmp_path):
    other = shutil.copytree(tiny_dir, tmp_path / "other_shapes")
    config = json.loads((other / "config.json").read_text())
    config["text_config"]["vocab_size"] += 10
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(VikerError, match="other_shapes: cannot load model"):
        load_model(other, device="cpu")


def test_an_adapter_loads_on_its_base_moved_elsewhere_and_with_the_bases_processor(tiny_dir, bench_dir, tmp_path):
    """A run's adapter pointed at its base model moved elsewhere (the same weights) was refused as trained on
    other weights; an adapter saved with a tokenizer alone was refused for want of an image processor."""
    from viker.cli import main

    base = shutil.copytree(tiny_dir, tmp_path / "base")
    assert main(["unlearn", "--model", str(base), "--data", str(bench_dir), "--method", "ga", "--max-steps", "2",
                 "--lr", "1e-2", "--save", "adapter", "--out", str(tmp_path / "run")]) == 0
    adapter = tmp_path / "run" / "model"
    (adapter / "processor_config.json").unlink()
    (adapter / "chat_template.jinja").unlink()
    assert (adapter / "tokenizer_config.json").is_file()
    before, _ = load_model(tmp_path / "run", device="cpu")
    _base_named(adapter, shutil.move(base, tmp_path / "moved"))
    after, processor = load_model(tmp_path / "run", device="cpu")
    batch = model_inputs(Collator(processor)(finetune_examples(bench_dir)[:2]))
    with torch.no_grad():
        torch.testing.assert_close(after(**batch).logits, before(**batch).logits, atol=0, rtol=0)
    outer = _adapter(tiny_dir, tmp_path / "outer")  # on a run folder of ours: the model in it, here an adapter
    _base_named(outer, tmp_path / "run")
    with pytest.raises(VikerError, match=f"outer: its base model, {adapter}, is itself a LoRA adapter"):
        load_model(outer, device="cpu")


def test_remote_code_is_off_unless_asked(monkeypatch, tiny_dir):
    """Safe loading: checkpoints never run their own code unless the user passes --trust-remote-code."""
    import transformers

    seen = []
    real_model = transformers.AutoModelForImageTextToText.from_pretrained
    real_processor = transformers.AutoProcessor.from_pretrained

    def spy(real):
        def wrapped(*args, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", spy(real_model))
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", spy(real_processor))
    load_model(tiny_dir, device="cpu")
    assert seen == [False, False]
    load_model(tiny_dir, device="cpu", trust_remote_code=True)
    assert seen[2:] == [True, True]


def test_a_hub_id_the_hub_cannot_serve_is_refused_at_once(tiny_dir, monkeypatch):
    """Offline, a hub id (or a mistyped path read as one) is one line at once, not minutes of retries; a local
    folder, a hub that answers at all, HF_HUB_OFFLINE (the cache alone) and an id the hub would refuse as
    malformed go on to loading as before."""
    import huggingface_hub
    from huggingface_hub import constants

    from viker.model import check_hub_reachable

    asked = []

    class Offline:
        def head(self, url, timeout):
            asked.append(url)
            raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Offline())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as on a user's machine (the tests set it)
    with pytest.raises(VikerError, match=r"^no-such-org/no-such-model: no such local folder, and the hub \(.*\) "
                                         r"cannot be reached to download it \(\[Errno -2\] Name or service"):
        load_model("no-such-org/no-such-model")
    check_hub_reachable(str(tiny_dir))  # a folder: the hub is never asked
    check_hub_reachable("org/bad..name")  # no valid id: loading reports it
    assert len(asked) == 1
    with monkeypatch.context() as m:
        m.setattr(constants, "HF_HUB_OFFLINE", True)
        check_hub_reachable("no-such-org/no-such-model")
    assert len(asked) == 1

    class Answering:  # an answer, even an error status, is a hub that can be reached
        def head(self, url, timeout):
            asked.append(url)
            return 403

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Answering())
    check_hub_reachable("no-such-org/no-such-model")
    assert len(asked) == 2


def test_an_adapters_base_named_by_a_relative_path_from_another_folder_says_where_it_is_named(tiny_dir, tmp_path,
                                                                                             monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    class Offline:
        def head(self, url, timeout):
            raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Offline())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    adapter = _adapter(tiny_dir, tmp_path / "adapter")
    shutil.copytree(tiny_dir, tmp_path / "runs" / "base")
    _base_named(adapter, "runs/base")  # relative to where it was trained: tmp_path
    monkeypatch.chdir(tmp_path)
    load_model(adapter, device="cpu")
    monkeypatch.chdir(adapter)
    with pytest.raises(VikerError, match=rf"^{adapter}/adapter_config.json names the base model runs/base "
                                         r"\(base_model_name_or_path\), which is no such local folder, and the hub"):
        load_model(adapter, device="cpu")


def test_a_benchmark_hub_id_the_hub_cannot_serve_is_refused_at_once_unless_a_cache_holds_it(tmp_path, monkeypatch):
    """--data org/name offline: one line at once, as for a model (datasets retried for half a minute); a copy in
    the hub's cache or in datasets' own goes on to loading, which reads it there."""
    import huggingface_hub
    from huggingface_hub import constants

    from viker.data.loader import load_profiles
    from viker.runs import check_hub_reachable

    class Offline:
        def head(self, url, timeout):
            raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Offline())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    with pytest.raises(VikerError, match=r"^no-such-org/no-such-bench: no such local folder, and the hub \(.*\) "
                                         r"cannot be reached to download it .*; give the folder of a downloaded "
                                         r"snapshot$"):
        load_profiles("no-such-org/no-such-bench", "forget_10")
    for cached in (tmp_path / "hub" / "datasets--no-such-org--no-such-bench",
                   tmp_path / "datasets" / "no-such-org___no-such-bench"):
        cached.mkdir(parents=True)
        check_hub_reachable("no-such-org/no-such-bench", "dataset")
        cached.rmdir()


def test_a_benchmark_hub_id_offline_is_read_from_the_snapshot_the_hubs_cache_holds(bench_dir, tmp_path, monkeypatch):
    """`hf download --repo-type dataset` leaves a snapshot in the hub's cache, which datasets does
    not read offline (only a copy it converted itself): HF_HUB_OFFLINE=1 and --data org/name failed at once,
    and without it after a minute of retries, with no word of the snapshot."""
    import shutil

    import huggingface_hub
    from huggingface_hub import constants

    from viker.data.loader import load_profiles

    repo = tmp_path / "hub" / "datasets--some-org--some-bench"
    shutil.copytree(bench_dir, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # no folder some-org/ here: the id is read as a hub id
    read, local = load_profiles("some-org/some-bench", "forget_10"), load_profiles(bench_dir, "forget_10")
    assert [replace(p, source="") for p in read] == [replace(p, source="") for p in local]
    assert "abc123" in read[0].source  # where a message would point

    class Offline:
        def head(self, url, timeout):
            raise ConnectionError("[Errno -2] Name or service not known")

    # a snapshot without the config asked for (a partial download) is no copy of it: said so, offline
    shutil.rmtree(repo / "snapshots" / "abc123" / "forget_10")
    with pytest.raises(VikerError, match=r"the snapshot of it in the hub's cache \(.*abc123\) has no config "
                                         r"'forget_10' \(a partial download\?\), and HF_HUB_OFFLINE is set"):
        load_profiles("some-org/some-bench", "forget_10")
    # online as far as the settings go, with no network: the refusal names the snapshot to read where it holds the
    # config, and not where it does not
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Offline())
    monkeypatch.setattr("datasets.load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("no network")))
    with pytest.raises(VikerError, match=r"no network\); there is no local folder some-org/some-bench either$"):
        load_profiles("some-org/some-bench", "forget_10")
    shutil.copytree(bench_dir / "forget_10", repo / "snapshots" / "abc123" / "forget_10")
    with pytest.raises(VikerError, match=r"a downloaded snapshot of it is in the hub's cache \(.*abc123\): set "
                                         r"HF_HUB_OFFLINE=1 to read it there, or pass that folder"):
        load_profiles("some-org/some-bench", "forget_10")


def test_a_model_folder_without_its_tokenizer_or_config_says_which_is_missing(tiny_dir, tmp_path):
    from viker.eval.evaluate import gibberish_scorer
    from viker.model import TOKENIZER_FILES, why_not_loaded

    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    for name in TOKENIZER_FILES:
        (copy / name).unlink(missing_ok=True)
    with pytest.raises(VikerError, match=r"model: cannot load model \(no tokenizer in it: none of tokenizer.json, "):
        load_model(copy)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VikerError, match=r"cannot load a text classifier \(no config in it: none of config.json"):
        gibberish_scorer(str(tmp_path / "empty"), "cpu")
    # another failure in a folder whose tokenizer is of a kind not listed is told as it is
    (copy / "tokenizer.bin").write_text("")
    assert why_not_loaded(ValueError("Unrecognized model in x\nmore"), copy) == "Unrecognized model in x"
