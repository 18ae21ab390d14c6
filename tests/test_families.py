"""LLaVA-1.5, Qwen2-VL and Idefics2 through one code path, on data in the real MLLMU-Bench layout.

Each family is a tiny random-weight model built from its config with its own processor and chat
template, saved, and loaded back through the Auto classes, then taken through finetune -> unlearn
(every method) -> eval, as a 7B checkpoint of that family would be on a GPU.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings

import pytest
import torch
from mllmu_layout import CELEBRITIES, write_mllmu
from safetensors.torch import load_file

from viker.cli import main
from viker.collate import IGNORE_INDEX, Collator, model_inputs
from viker.data.examples import finetune_examples
from viker.data.loader import load_profiles
from viker.data.schema import Example
from viker.errors import VikerError
from viker.eval.evaluate import EvalConfig, answer_logprobs
from viker.eval.generate import generate, stop_token_ids
from viker.eval.run import run_eval
from viker.finetune import FinetuneConfig, run_finetune
from viker.methods.base import FrozenReference
from viker.methods.losses import gather_answer_positions, token_logprobs
from viker.model import (
    LoraSettings,
    apply_lora,
    language_model_linear_layers,
    load_model,
    load_processor,
    pick_dtype,
)
from viker.model.tiny import TinyConfig, build_tiny
from viker.train import TrainConfig
from viker.unlearn import UnlearnConfig, run_unlearn

FAMILIES = ("llava", "qwen2_vl", "idefics2")
CLASSES = {"llava": "LlavaForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration",
           "idefics2": "Idefics2ForConditionalGeneration"}
USER_TURN = {"llava": "USER: <image>\n", "qwen2_vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>",
             "idefics2": "User:<image>"}
SMALL = dict(vocab_size=600, hidden=32, intermediate=64, layers=1, heads=2, vision_hidden=16, vision_layers=1,
             image_size=16)
METHODS = {"ga": {}, "graddiff": {}, "klmin": {}, "npo": {}, "idkpo": {}, "viker": {"k": 2}}


@pytest.fixture(scope="module")
def real_bench(tmp_path_factory):
    return write_mllmu(tmp_path_factory.mktemp("mllmu"))


@pytest.fixture(scope="module")
def saved(real_bench, tmp_path_factory):
    """family -> folder of a saved tiny model (built once per family, on first use)."""
    folders = {}

    def get(family):
        if family not in folders:
            model, processor = build_tiny(real_bench, TinyConfig(**SMALL, family=family))
            folders[family] = tmp_path_factory.mktemp(family)
            model.save_pretrained(folders[family])
            processor.save_pretrained(folders[family])
        return folders[family]

    return get


def _mixed(real_bench, n=4):
    """Examples with and without an image, interleaved: the batches every method sees."""
    examples = finetune_examples(real_bench)
    with_image = [e for e in examples if e.image is not None][:n]
    text_only = [e for e in examples if e.image is None][:n]
    return [e for pair in zip(with_image, text_only) for e in pair]


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_model_loads_through_auto_classes_on_cpu_in_float32(family, saved, real_bench):
    model, processor = load_model(saved(family), device="cpu")
    assert type(model).__name__ == CLASSES[family]
    assert json.loads((saved(family) / "config.json").read_text())["model_type"] == family
    assert next(model.parameters()).dtype == torch.float32 and next(model.parameters()).device.type == "cpu"
    collate = Collator(processor)
    prompt = collate.render(_mixed(real_bench)[0])
    assert USER_TURN[family] in prompt, prompt  # the family's own conversation format
    again, _ = load_model(saved(family), device="cpu")
    batch = collate(_mixed(real_bench))
    with torch.no_grad():
        assert torch.equal(model(**model_inputs(batch)).logits, again(**model_inputs(batch)).logits)


def test_bfloat16_on_a_gpu_float32_on_cpu(monkeypatch):
    """bf16 where the GPU computes in it (Ampere on), not where it is emulated (a T4, 7.5), and of the GPU asked."""
    capability = {0: (7, 5), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # as a T4 answers by default
    monkeypatch.setattr(torch.version, "hip", None)
    assert pick_dtype(torch.device("cuda:1")) == torch.bfloat16
    assert pick_dtype(torch.device("cuda:0")) == torch.float32
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda"), "float16") == torch.float16


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_only_the_language_models_linear_layers(family, real_bench):
    model, _ = build_tiny(real_bench, TinyConfig(**SMALL, family=family))
    targets = language_model_linear_layers(model)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    outside = [n for n in linear if n not in targets]
    assert targets and all(".language_model." in t or ".text_model." in t for t in targets)
    # what stays out: the vision tower, the projector / merger / perceiver connector, the output layer
    assert outside and all(any(part in n for part in ("vision", "visual", "projector", "connector", "lm_head"))
                           for n in outside), outside
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = apply_lora(model, LoraSettings(r=2, alpha=4))
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]  # nothing for a user to act on
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and (".language_model." in n or ".text_model." in n) for n in trainable)


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_batches_label_only_the_answers_and_generate_as_one_at_a_time(family, saved, real_bench):
    model, processor = load_model(saved(family), device="cpu")
    examples = _mixed(real_bench)
    batch = Collator(processor)(examples)
    tok = processor.tokenizer
    for row, ex in enumerate(examples):
        answer = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert tok.decode(answer, skip_special_tokens=True).strip() == ex.answer
        assert tok.convert_ids_to_tokens(answer[-1:].tolist())[0] in tok.all_special_tokens  # the end of the turn
    with torch.no_grad():  # sharpen the random model so that its greedy answers depend on the prompt
        for name, module in model.named_modules():
            if name in set(language_model_linear_layers(model)):
                module.weight.mul_(8)
        model.lm_head.weight.mul_(30)
    batched = generate(model, processor, examples, batch_size=8, max_new_tokens=6, progress=False)
    single = [generate(model, processor, [ex], batch_size=1, max_new_tokens=6, progress=False)[0] for ex in examples]
    assert batched == single
    assert len(set(batched)) > 1


class _Scripted(torch.nn.Module):
    """An output layer that makes the model say the given tokens, one per forward pass, then the last forever."""

    def __init__(self, vocab: int, script: list[int]):
        super().__init__()
        self.vocab, self.script, self.calls = vocab, script, 0

    def forward(self, hidden):
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        return logits


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_stops_where_training_ends_an_answer_whatever_the_checkpoint_lists(family, saved, real_bench):
    """A checkpoint whose generation_config.json names only </s> still stops at the end of the turn (<|im_end|>,
    <end_of_utterance>) its answers were trained to end with, rather than run on into the scored answer."""
    model, processor = load_model(saved(family), device="cpu")
    tok = processor.tokenizer
    end = Collator(processor).end_of_turn_id()
    word, after, unused = list(dict.fromkeys(i for i in tok("Oslo was born in", add_special_tokens=False)["input_ids"]
                                             if i != end))[:3]
    model.generation_config.eos_token_id = unused
    model.lm_head = _Scripted(model.config.get_text_config().vocab_size, [word, end, after])
    example = _mixed(real_bench)[0]
    assert generate(model, processor, [example], max_new_tokens=6, progress=False) == [tok.decode([word]).strip()]


def test_preflight_counts_an_images_tokens_with_the_word_after_it(saved, real_bench):
    """Idefics2's processor puts a space between the image and the question, and " Who" can be two tokens where
    "Who" is one: an example over --max-length is refused up front whichever question was measured first."""
    model, processor = load_model(saved("idefics2"), device="cpu")
    image = next(e for e in finetune_examples(real_bench) if e.image is not None).image
    first, longer = (Example(q, "This is Alon Varo.", image) for q in ("In it?", "Who is this person in the picture?"))
    n = int(Collator(processor)([longer])["attention_mask"].sum())
    with pytest.raises(VikerError, match=f"{n} tokens, over --max-length {n - 1}"):
        Collator(processor, max_length=n - 1).preflight(model, [first, longer])
    Collator(processor, max_length=n).preflight(model, [first, longer])


def test_preflight_counts_each_image_size_own_tokens_under_a_dynamic_resolution(saved):
    """Qwen2-VL's image tokens grow with the image: an example over --max-length is refused up front,
    not by the collator in the middle of a run, whatever image came first."""
    import io

    from PIL import Image

    def example(side):
        buffer = io.BytesIO()
        Image.new("RGB", (side, side), (120, 30, 200)).save(buffer, "PNG")
        return Example("Who is this person?", "This is Alon Varo.", buffer.getvalue())

    model, processor = load_model(saved("qwen2_vl"), device="cpu")
    processor.image_processor.size = {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}  # a pixel range
    small, large = example(16), example(64)
    tokens = [int(Collator(processor)([e])["attention_mask"].sum()) for e in (small, large)]
    assert tokens[0] < tokens[1]
    with pytest.raises(VikerError, match=f"{tokens[1]} tokens, over --max-length {tokens[1] - 1}"):
        Collator(processor, max_length=tokens[1] - 1).preflight(model, [small, large])
    Collator(processor, max_length=tokens[1]).preflight(model, [small, large])


def test_an_image_the_processor_refuses_is_named_in_one_line(saved):
    """Qwen2-VL's processor takes no image with an aspect ratio over 200: a ValueError from inside transformers,
    naming no image, mid-evaluation."""
    import io

    from PIL import Image

    def example(size, who):
        buffer = io.BytesIO()
        Image.new("RGB", size, (120, 30, 200)).save(buffer, "PNG")
        return Example("Who is this person?", "This is Alon Varo.", buffer.getvalue(), profile_id=who)

    processor = load_model(saved("qwen2_vl"), device="cpu")[1]
    with pytest.raises(VikerError, match=r"^image of p7 \(40×12000\): Qwen2VLProcessor refuses it: absolute aspect "
                                         r"ratio must be smaller than 200"):
        Collator(processor)([example((32, 32), "p1"), example((40, 12000), "p7")])


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_distributions_from_the_kept_logits_equal_the_full_forward(family, saved, real_bench):
    """FrozenReference projects only the answer positions (logits_to_keep); the result must be the
    full forward pass's softmax there, for every family's way of placing image tokens."""
    model, processor = load_model(saved(family), device="cpu")
    batch = Collator(processor, padding_side="left")(_mixed(real_bench))
    probs = FrozenReference(model).answer_probs(batch)
    with torch.no_grad():
        logits, _ = gather_answer_positions(model(**model_inputs(batch)).logits, batch["labels"])
    assert probs.shape == logits.shape
    assert torch.allclose(probs, logits.softmax(-1), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_option_scores_from_the_kept_logits_equal_the_full_forward(family, saved, real_bench):
    """The evaluator scores answers (multiple-choice options, CLEAR's sets) with the output layer on
    the positions from the earliest answer on only; each answer's log-probability and token count must
    be the full forward pass's, with right padding and answers starting at different positions."""
    model, processor = load_model(saved(family), device="cpu")
    examples = _mixed(real_bench)
    scores = answer_logprobs(model, processor, examples, batch_size=8)
    batch = Collator(processor)(examples)
    assert len(set((batch["labels"] != IGNORE_INDEX).float().argmax(1).tolist())) > 1  # answers start apart
    with torch.no_grad():
        lp, mask = token_logprobs(model(**model_inputs(batch)).logits, batch["labels"])
    assert [n for _, n in scores] == mask.sum(-1).int().tolist()
    assert torch.allclose(torch.tensor([s for s, _ in scores]), lp.sum(-1), atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_then_every_method_then_eval(family, saved, real_bench, tmp_path):
    """The MLLMU-Bench protocol on real-layout data, from a saved checkpoint as from a downloaded one:
    vanilla finetune (LoRA on ft_Data, merged), unlearn forget_10 with every method from that vanilla
    model, evaluate; with no pools of ours in the data (ViKeR's people references come from the
    Retain_Set)."""
    vanilla = tmp_path / "vanilla"
    metrics = run_finetune(FinetuneConfig(model=str(saved(family)), data=str(real_bench), out=str(vanilla),
                                          train=TrainConfig(max_steps=2, batch_size=8, lr=1e-3)), progress=False)
    assert math.isfinite(metrics["final_loss"])
    settings = json.loads((vanilla / "config.json").read_text())
    assert settings["finetune"]["tuning"] == "lora" and settings["finetune"]["train_on"] == "ft_Data"
    assert settings["examples"] == len(finetune_examples(real_bench, "ft_Data"))
    before = load_file(str(vanilla / "model" / "model.safetensors"))
    for method, args in METHODS.items():
        out = tmp_path / method
        run_unlearn(UnlearnConfig(model=str(vanilla), data=str(real_bench), forget="forget_10", method=method,
                                  method_args=args, out=str(out), train=TrainConfig(max_steps=1, batch_size=4, lr=1e-3),
                                  cache_dir=str(tmp_path / "cache")), progress=False)
        after = load_file(str(out / "model" / "model.safetensors"))
        assert after.keys() == before.keys(), f"{method}: the merged model is not the vanilla architecture"
        assert any(not torch.equal(after[k], before[k]) for k in before), f"{method} changed no weight"
    setup = json.loads((tmp_path / "viker" / "config.json").read_text())["setup"]
    assert setup["reference_pool"]["source"].startswith("Retain_Set")
    assert setup["reference_pool"]["images"] == CELEBRITIES

    cfg = EvalConfig(forget="forget_10", max_new_tokens=6, retain_limit=1)
    metrics = run_eval(str(tmp_path / "viker"), str(real_bench), str(tmp_path / "viker"), cfg, progress=False)
    for key in ("acc", "acc_text", "rougeL", "bleu", "cloze"):
        for name in ("forget", "test", "retain", "real"):
            assert 0.0 <= metrics[f"{name}_{key}"] <= 100.0
    records = [json.loads(line) for line in (tmp_path / "viker" / "generations.jsonl").read_text().splitlines()]
    forget = load_profiles(real_bench, "forget_10")
    people = {"forget": forget, "test": forget, "retain": load_profiles(real_bench, "retain_90")[:1],
              "real": load_profiles(real_bench, "Retain_Set")}
    for name, profiles in people.items():  # one record per question asked: generation, multiple choice, cloze
        expected = sum(len(p.generation) + len(p.mc) + len(p.cloze) for p in profiles)
        assert sum(r["set"] == name for r in records) == expected
    assert {r["image"] for r in records} == {True, False}  # both question types were asked


@pytest.mark.parametrize("family", FAMILIES)
def test_a_run_saved_as_an_adapter_loads_as_its_merged_model_and_unlearns_again(family, saved, real_bench, tmp_path):
    """An adapter run (`--save adapter`, every epoch snapshot) loads onto the base model it names, merged,
    with its processor (Qwen2-VL's too, without torchvision); unlearning can start from it."""
    steps = TrainConfig(max_steps=1, batch_size=4, lr=1e-2)
    run_unlearn(UnlearnConfig(model=str(saved(family)), data=str(real_bench), method="ga", out=str(tmp_path / "one"),
                              train=steps, lora=LoraSettings(r=4, alpha=8, dropout=0.0, merge=False)), progress=False)
    assert (tmp_path / "one" / "model" / "adapter_config.json").is_file()
    model, processor = load_model(tmp_path / "one", device="cpu")
    assert type(model).__name__ == CLASSES[family] and not any("lora_" in k for k in model.state_dict())
    base, _ = load_model(saved(family), device="cpu")
    batch = model_inputs(Collator(processor)(_mixed(real_bench, 2)))
    with torch.no_grad():
        assert (model(**batch).logits - base(**batch).logits).abs().max() > 1e-4  # the adapter's change is in
    run_unlearn(UnlearnConfig(model=str(tmp_path / "one"), data=str(real_bench), method="ga",
                              out=str(tmp_path / "two"), train=steps), progress=False)
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()
    # an adapter trained on it would name the base model and leave the first run out
    with pytest.raises(VikerError, match="an adapter run, merged into its base model when loaded"):
        run_unlearn(UnlearnConfig(model=str(tmp_path / "one"), data=str(real_bench), method="ga",
                                  out=str(tmp_path / "three"), train=steps, lora=LoraSettings(merge=False)),
                    progress=False)


def test_a_qwen2_vl_release_keeping_its_chat_template_in_chat_template_json_loads_it(saved, real_bench, tmp_path):
    """Qwen2-VL's releases keep the template in chat_template.json, which a tokenizer does not read: the
    processor built without torchvision must still have it, and prompt as the saved model does."""
    release = tmp_path / "release"
    shutil.copytree(saved("qwen2_vl"), release)
    template = (release / "chat_template.jinja").read_text()
    (release / "chat_template.jinja").unlink()
    (release / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    processor, own = load_processor(str(release)), load_processor(str(saved("qwen2_vl")))
    assert processor.chat_template == template
    examples = _mixed(real_bench, 2)
    assert torch.equal(Collator(processor)(examples)["input_ids"], Collator(own)(examples)["input_ids"])


@pytest.mark.parametrize("family", FAMILIES)
def test_cagul_ranks_visual_tokens_by_the_attention_of_the_models_own_forward_pass(family, real_bench):
    """CAGUL's short scoring pass (flagged rows only, stopped after its layer) must see the attention the
    whole model computes: Qwen2-VL's 3-D positions come from inputs beside the tokens (image_grid_thw,
    mm_token_type_ids), which matter once an image has more than one merged patch (64 px here)."""
    from viker.model.cagul import CagulConfig, CagulModel

    model, processor = build_tiny(real_bench, TinyConfig(**{**SMALL, "layers": 2, "image_size": 64}, family=family))
    cagul = CagulModel(model.eval(), CagulConfig(layers=[1]))
    examples = [e for e in finetune_examples(real_bench) if e.image is not None][:3]
    batch = model_inputs(Collator(processor, answers=False)([examples[0], _mixed(real_bench, 1)[1], *examples[1:]]))
    scores = cagul.importance(batch, cagul.original_features(batch), [1, 2])  # the images of rows 2 and 3
    with cagul._eager_attention(), torch.no_grad():
        attention = model(**batch, output_attentions=True).attentions[1].float().mean(dim=1)
    is_image = batch["input_ids"] == cagul.image_token_id
    for score, row in zip(scores, (2, 3)):
        positions = is_image[row].nonzero().squeeze(-1)
        queries = (torch.arange(is_image.shape[1]) > positions.max()) & batch["attention_mask"][row].bool()
        torch.testing.assert_close(score, attention[row][queries][:, positions].mean(dim=0), atol=1e-7, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_cagul_trains_and_answers_mixed_batches_on_every_family(family, saved, real_bench, tmp_path):
    """CAGUL on each family, end to end: its modules train on the frozen model, and the evaluator's batches,
    which mix questions with and without an image, go through it (every image rewritten)."""
    from viker.model.cagul import CagulModel

    run = tmp_path / "cagul"
    run_unlearn(UnlearnConfig(model=str(saved(family)), data=str(real_bench), method="cagul",
                              method_args={"k": 2, "disc_steps": 5}, out=str(run),
                              train=TrainConfig(max_steps=1, batch_size=4, lr=1e-3), cache_dir=str(tmp_path / "c")),
                 progress=False)
    model, processor = load_model(run, device="cpu")
    assert isinstance(model, CagulModel)
    assert model.encoder.up.weight.abs().sum() > 0  # the encoder trained
    model.mode = "force"
    examples = _mixed(real_bench, 2)  # image, text, image, text
    batch = model_inputs(Collator(processor)(examples))
    with torch.no_grad():
        rewritten, bare = model(**batch).logits, model.base(**batch).logits
    for row, example in enumerate(examples):  # every image rewritten, every text-only question untouched
        assert torch.equal(rewritten[row], bare[row]) == (example.image is None), (family, row)
    cfg = EvalConfig(forget="forget_10", max_new_tokens=4, scope={"forget": ("generation", "multiple_choice")})
    metrics = run_eval(str(run), str(real_bench), str(run), cfg, progress=False, model_and_processor=(model, processor))
    assert 0.0 <= metrics["forget_acc"] <= 100.0 and 0.0 <= metrics["forget_acc_text"] <= 100.0
    collate = Collator(processor, answers=False)  # its answers stop where the base model's do
    assert stop_token_ids(model, collate) == stop_token_ids(model.base, collate)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])  # llava, the tiny model's default, was taken silently
def test_family_is_for_the_tiny_model_only(family, tmp_path, capsys):
    code = main(["finetune", "--model", str(tmp_path), "--family", family, "--data", str(tmp_path),
                 "--out", str(tmp_path / "run")])
    assert code == 2 and "--family applies to --model tiny only" in capsys.readouterr().err
