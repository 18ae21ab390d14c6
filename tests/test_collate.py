"""The collator: chat-templated prompts, image inputs, and labels on the answer tokens only."""

from __future__ import annotations

import pytest
import torch

from viker.collate import IGNORE_INDEX, Collator, model_inputs
from viker.data.examples import finetune_examples
from viker.data.schema import Example
from viker.errors import VikerError


@pytest.fixture(scope="module")
def mixed(bench_dir):
    examples = finetune_examples(bench_dir)
    with_image = [e for e in examples if e.image is not None]
    text_only = [e for e in examples if e.image is None]
    return [with_image[0], text_only[0], with_image[1], text_only[1]]


def test_labels_cover_exactly_the_answer_and_end_of_turn(tiny, mixed):
    _, processor = tiny
    batch = Collator(processor)(mixed)
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    for row, ex in enumerate(mixed):
        labelled = batch["labels"][row] != IGNORE_INDEX
        # exactly the answer's own tokens followed by </s>
        expected = tok(" " + ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert batch["input_ids"][row][labelled].tolist() == expected
        # never a prompt, image placeholder or padding token
        ids = batch["input_ids"][row]
        assert not labelled[ids == image_id].any()
        assert not labelled[batch["attention_mask"][row] == 0].any()
        prompt_part = tok.decode(ids[~labelled & (batch["attention_mask"][row] == 1)])
        assert prompt_part.endswith("ASSISTANT:") and ex.question in prompt_part


def test_an_answer_the_template_leaves_open_is_closed_by_the_end_of_sequence_token(tiny, mixed):
    """LLaVA-1.5's own template writes an answer and a space, nothing after it: the collator adds the
    tokenizer's end-of-sequence token and labels it, so the model learns where its answers stop."""
    import copy

    _, processor = tiny
    open_ended = copy.deepcopy(processor)
    open_ended.chat_template = (
        "{% for m in messages %}{{ m['role'].upper() + ': ' }}"
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] + ' ' }}{% endif %}"
        "{% endfor %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    collate = Collator(open_ended)
    assert collate.render(mixed[0], mixed[0].answer).endswith(mixed[0].answer + "</s>")
    batch, closed = collate(mixed), Collator(processor)(mixed)  # the tiny template writes </s> itself
    tok = processor.tokenizer
    for row, ex in enumerate(mixed):
        labelled = batch["input_ids"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert labelled == tok(" " + ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert labelled == closed["input_ids"][row][closed["labels"][row] != IGNORE_INDEX].tolist()
    prompt = collate.render(mixed[0])
    assert prompt.endswith("ASSISTANT:") and "</s>" not in prompt


def test_images_expand_to_the_model_image_tokens(tiny, mixed):
    model, processor = tiny
    batch = Collator(processor)(mixed)
    image_id = model.config.image_token_index
    per_row = (batch["input_ids"] == image_id).sum(dim=1).tolist()
    n = model.config.image_seq_length
    assert per_row == [n if ex.image is not None else 0 for ex in mixed]
    assert batch["pixel_values"].shape[0] == sum(ex.image is not None for ex in mixed)
    out = model(**model_inputs(batch))  # a mixed image / text-only batch runs through the model
    assert out.logits.shape[:2] == batch["input_ids"].shape


def test_generation_batches_are_left_padded_prompts(tiny, mixed):
    _, processor = tiny
    batch = Collator(processor, answers=False)(mixed)
    assert "labels" not in batch
    assert (batch["attention_mask"][:, -1] == 1).all()  # every prompt ends at the last position
    last = processor.tokenizer.decode(batch["input_ids"][0])
    assert last.endswith("ASSISTANT:")


def test_label_mask_does_not_depend_on_padding_side(tiny, mixed):
    _, processor = tiny
    right = Collator(processor)(mixed)
    lengths = Collator(processor).answer_lengths(
        [Collator(processor).render(e) for e in mixed], [Collator(processor).render(e, e.answer) for e in mixed], mixed
    )
    # the same rows with their padding moved to the left
    pads = (right["attention_mask"] == 0).sum(dim=1).tolist()
    left = {k: torch.stack([row.roll(p) for row, p in zip(right[k], pads)]) for k in ("input_ids", "attention_mask")}
    assert (left["attention_mask"][:, -1] == 1).all()
    labels = Collator.answer_labels(left, lengths)
    assert torch.equal(labels, torch.stack([row.roll(p) for row, p in zip(right["labels"], pads)]))


def test_empty_answer_is_a_clear_error(tiny):
    _, processor = tiny
    with pytest.raises(VikerError, match="has no tokens"):
        Collator(processor)([Example("Who?", "", None)])


def test_a_special_token_written_in_the_data_is_refused_by_name(tiny, mixed):
    """``<image>`` typed into a question (LLaVA-format data) would be expanded as a second image's place, and the
    processor fail on a count of images; ``</s>`` in an answer would teach the model to stop there."""
    _, processor = tiny
    image = next(ex.image for ex in mixed if ex.image is not None)
    with pytest.raises(VikerError, match="^example '<image>': its question holds '<image>', which the tokenizer"):
        Collator(processor, answers=False)([Example("<image>\nWho is this?", "Ann.", image)])
    with pytest.raises(VikerError, match="its answer holds '</s>'"):
        Collator(processor)([Example("Who?", "Ann.</s> Then more.", None)])
    Collator(processor)([Example("Who is <b>this</b>?", "Ann </ s>.", image)])  # text like a tag is text


def test_an_example_over_max_length_is_named_even_with_an_empty_question(tiny):
    _, processor = tiny
    with pytest.raises(VikerError, match=r"^example '': \d+ tokens, over --max-length 3"):
        Collator(processor, max_length=3)([Example("", "Paris", None)])


def test_an_answer_whose_tokens_merge_with_the_prompts_is_refused_not_mislabelled(tiny):
    """A template whose prompt ends inside a word ("... th") that the answer finishes ("e end."): the tokens of
    prompt + answer do not start with the prompt's, so no count of answer tokens would label the answer alone."""
    import copy

    _, processor = tiny
    tok = processor.tokenizer
    assert len(tok(" the", add_special_tokens=False)["input_ids"]) == 1  # " th" + "e" is one token in the row
    split = copy.deepcopy(processor)
    split.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'][-1]['text'] }} "
        "{% else %}ASSISTANT: th{{ m['content'][0]['text'] }}</s>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT: th{% endif %}")
    with pytest.raises(VikerError, match="^example 'Who is it\\?': the tokenized prompt is not a prefix"):
        Collator(split)([Example("Who is it?\nA. x", "e end.", None)])


def test_a_tokenizer_without_a_padding_token_is_a_clear_error(tiny):
    import copy

    _, processor = tiny
    unpadded = copy.deepcopy(processor)
    unpadded.tokenizer.pad_token = None
    with pytest.raises(VikerError, match="no padding token"):
        Collator(unpadded)


def _same_rows(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("input_ids", "attention_mask", "labels"))


def test_a_template_that_writes_the_bos_token_itself_gets_no_second_one(tiny, mixed):
    """Gemma 3's and Llama 3.2 Vision's templates start with {{ bos_token }}: the rows are the same as when the
    tokenizer adds it, one BOS each, in training, in generation and in the length checks."""
    import copy

    _, processor = tiny
    writes_bos = copy.deepcopy(processor)
    writes_bos.chat_template = "{{ bos_token }}" + processor.chat_template
    for answers in (True, False):
        ours, theirs = Collator(writes_bos, answers=answers)(mixed), Collator(processor, answers=answers)(mixed)
        assert torch.equal(ours["input_ids"], theirs["input_ids"]) and torch.equal(ours["attention_mask"],
                                                                                     theirs["attention_mask"])
        assert not answers or torch.equal(ours["labels"], theirs["labels"])
    bos = processor.tokenizer.bos_token_id
    assert (Collator(writes_bos)(mixed)["input_ids"] == bos).sum(dim=1).tolist() == [1] * len(mixed)
    n = int(Collator(processor)([mixed[0]])["attention_mask"].sum())
    Collator(writes_bos, max_length=n).preflight(tiny[0], [mixed[0]])


def test_a_processor_with_several_chat_templates_asks_with_its_default_one(tiny, mixed):
    """A checkpoint with additional_chat_templates/ loads its templates as a dict."""
    import copy

    _, processor = tiny
    several = copy.deepcopy(processor)
    several.chat_template = {"default": processor.chat_template, "tool_use": "{{ 'tools' }}"}
    assert _same_rows(Collator(several)(mixed), Collator(processor)(mixed))
    several.chat_template = {"tool_use": "{{ 'tools' }}"}
    with pytest.raises(VikerError, match="chat templates named tool_use and no default"):
        Collator(several)


def test_a_photo_shown_by_several_questions_of_a_batch_is_decoded_once(tiny, bench_dir, monkeypatch):
    """A large photo decoded for each of a person's questions held a copy per question (a 6000x6000 JPEG: 5.8 GB
    for a batch); the batch is the same with one copy."""
    import viker.collate as collate

    _, processor = tiny
    with_image = [ex for ex in finetune_examples(bench_dir) if ex.image is not None]
    one_person = [ex for ex in with_image if ex.image == with_image[0].image][:3]
    other = next(ex for ex in with_image if ex.image != with_image[0].image)
    assert len(one_person) >= 2
    batch = [*one_person, other]
    before = Collator(processor)(batch)
    decoded = []
    real = collate.decode_image
    monkeypatch.setattr(collate, "decode_image",
                        lambda data, source="image": decoded.append(data) or real(data, source))
    after = Collator(processor)(batch)
    assert len(decoded) == 2 and all(torch.equal(before[k], after[k]) for k in before)


def test_examples_and_prompts_past_the_models_context_are_warned_of(tiny, mixed, monkeypatch, capsys):
    """Nothing cuts a sequence longer than the positions the model learned (max_position_embeddings): a training
    run and an evaluation say how many of theirs run past it, counting image tokens and the reply's new tokens."""
    from viker.eval.generate import generate

    model, processor = tiny
    collate = Collator(processor)
    lengths = [int(collate([ex])["attention_mask"].sum()) for ex in mixed]
    collate.preflight(model, mixed)
    generate(model, processor, mixed, max_new_tokens=3, progress=False)
    assert "warning" not in capsys.readouterr().err  # the tiny model's 256 positions hold them all
    longest = max(lengths)
    monkeypatch.setattr(model.config.text_config, "max_position_embeddings", longest - 1)
    collate.preflight(model, mixed)
    assert capsys.readouterr().err == f"warning: {lengths.count(longest)} of 4 examples run past the model's " \
        f"context ({longest - 1} positions, its max_position_embeddings); nothing cuts them, and the model has " \
        "learned no position beyond it\n"
    prompts = [int(Collator(processor, answers=False)([ex])["attention_mask"].sum()) for ex in mixed]
    monkeypatch.setattr(model.config.text_config, "max_position_embeddings", max(prompts) + 2)
    generate(model, processor, mixed, max_new_tokens=3, desc="forget: cloze", progress=False)
    assert capsys.readouterr().err.startswith(f"warning: {sum(n + 3 > max(prompts) + 2 for n in prompts)} of 4 "
                                              "prompts (forget: cloze), with up to 3 new tokens, run past the model's")

    def stopped(**inputs):  # a reply that would run on for hours: Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "generate", stopped)
    with pytest.raises(KeyboardInterrupt):  # said before generating, not once it is done
        generate(model, processor, mixed, max_new_tokens=10**6, desc="forget: generation", progress=False)
    assert capsys.readouterr().err.startswith("warning: 4 of 4 prompts (forget: generation; their text alone), with "
                                              "up to 1000000 new tokens, run past the model's context")
