"""The in-process generator: left-padded batches answer like prompts asked one at a time, sampling is seeded,
llama.cpp's windowed repeat penalty never sees padding, answers say why they ended, and a thinking model's
reasoning is set apart from its answer."""

from __future__ import annotations

import pytest
import torch

from finetune.data.canonical import Conversation
from finetune.generate import Answer, Decoding
from finetune.generate.hf import HFGenerator, _recent_repetition_penalty, stop_token_ids

PROMPTS = [Conversation([{"role": "user", "content": text}], f"p:{i}") for i, text in enumerate(
    ["Hi", "How do I export the monthly report to CSV from the billing screen?", "Reset my password please",
     "What is the capital of France? Answer in one word."])]


def test_batched_greedy_answers_equal_answers_one_at_a_time(tiny_model):
    model, tokenizer = tiny_model
    # The random model's plain greedy answer is newlines; the penalty (which must skip the padding) varies it.
    decoding = Decoding(max_new_tokens=12, repeat_penalty=1.5, stop=("<|im_end|>",))
    together = HFGenerator(model, tokenizer, "t", batch_size=4).generate(PROMPTS, decoding)
    alone = [HFGenerator(model, tokenizer, "t", batch_size=1).generate([p], decoding)[0] for p in PROMPTS]
    assert together == alone
    assert len({a.text for a in together}) > 1  # different prompts, different answers


def test_sampling_is_seeded(tiny_model):
    model, tokenizer = tiny_model
    sampled = Decoding(max_new_tokens=12, temperature=1.0, top_p=0.95, top_k=40, repeat_penalty=1.1, seed=3)
    generator = HFGenerator(model, tokenizer, "t", batch_size=2)
    first = generator.generate(PROMPTS, sampled)
    assert generator.generate(PROMPTS, sampled) == first
    other = generator.generate(PROMPTS, Decoding(**{**sampled.as_dict(), "seed": 4, "stop": ()}))
    assert [a.text for a in other] != [a.text for a in first]


def test_answers_cut_at_max_new_tokens_say_so(tiny_model):
    model, tokenizer = tiny_model
    answers = HFGenerator(model, tokenizer, "t").generate(PROMPTS[:2], Decoding(max_new_tokens=3))
    assert len(answers) == 2 and all(a.finish_reason == "length" and a.tokens == 3 for a in answers)


@pytest.mark.quick
def test_repeat_penalty_covers_the_last_n_tokens_and_never_padding():
    penalty = _recent_repetition_penalty(2.0, last_n=3, prompt_starts=[0, 3])
    ids = torch.tensor([[1, 2, 3, 4, 5], [9, 9, 9, 6, 7]])  # row 1: three left-padding tokens (id 9)
    scores = torch.tensor([[4.0] * 10, [-4.0] * 10])
    out = penalty(ids, scores.clone())
    assert out[0].tolist() == [4, 4, 4, 2, 2, 2, 4, 4, 4, 4]  # 3, 4, 5: the last three, divided
    assert out[1].tolist() == [-4, -4, -4, -4, -4, -4, -8, -8, -4, -4]  # 6, 7 multiplied (negative); 9 untouched


def test_stop_tokens_are_the_end_of_turn_and_end_of_sequence(tiny_model):
    _, tokenizer = tiny_model
    ids = stop_token_ids(tokenizer, ("<|im_end|>", "not one token"))
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids and tokenizer.eos_token_id in ids
    assert len(ids) <= 2


@pytest.mark.quick
@pytest.mark.parametrize(("decoding", "text"), [
    (Decoding(max_new_tokens=80), "greedy; no repeat penalty; at most 80 new tokens; stop at end-of-sequence"),
    (Decoding(max_new_tokens=96, temperature=0.2, top_p=0.9, top_k=40, repeat_penalty=1.1, seed=42,
              stop=("<|im_end|>",)),
     "sampled: temperature 0.2, top_p 0.9, top_k 40, seed 42; repeat penalty 1.1 over the last 64 tokens; at most "
     "96 new tokens; stop at `<|im_end|>`"),
])
def test_decoding_describes_itself(decoding, text):
    assert decoding.describe() == text


@pytest.mark.quick
@pytest.mark.parametrize(("reply", "text", "reasoning"), [
    ("Open Settings.", "Open Settings.", ""),
    ("<think>\n\n</think>\n\nOpen Settings.", "Open Settings.", ""),  # Qwen 3 trained without thinking
    ("<think>\nThe user wants CSV.\n</think>\n\nOpen Settings. ", "Open Settings.", "The user wants CSV."),
    ("The user wants CSV.</think>Open Settings.", "Open Settings.", "The user wants CSV."),  # <think> in the prompt
    ("<think>\nThe user wants", "<think>\nThe user wants", ""),  # cut while thinking: no answer to set apart
])
def test_a_thinking_block_is_set_apart_from_the_answer(reply, text, reasoning):
    answer = Answer.of_reply(reply, "stop", 9)
    assert (answer.text, answer.reasoning) == (text, reasoning)
