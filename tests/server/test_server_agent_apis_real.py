"""The Responses, Messages and embeddings APIs on the real default model (SmolLM2-135M-Instruct) through the
official `openai` and `anthropic` clients: streamed text equals the whole at temperature 0, and embeddings rank a
paraphrase above an unrelated sentence."""
from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest
import torch
from openai import OpenAI

from server_helpers import ServerProcess

pytestmark = pytest.mark.slow

# (sentence, its paraphrase, an unrelated sentence)
TRIPLES = [
    ("The cat is sleeping on the sofa.", "A cat naps on the couch.", "The stock market fell sharply today."),
    ("How do I reset my password?", "What are the steps to change my login password?",
     "The recipe needs two cups of flour."),
    ("It is raining heavily outside.", "There is a lot of rain falling outdoors.",
     "She plays the violin in an orchestra."),
    ("The train to Paris leaves at noon.", "The Paris train departs at twelve o'clock.",
     "Photosynthesis converts light into chemical energy."),
    ("He bought a new car yesterday.", "Yesterday he purchased a new automobile.", "The museum is closed on Mondays."),
]


@pytest.fixture(scope="module")
def real_server(smollm2_path) -> Iterator[ServerProcess]:
    s = ServerProcess(smollm2_path, "--threads", "2")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def oai(real_server) -> OpenAI:
    return OpenAI(base_url=real_server.url + "/v1", api_key="x", max_retries=0, timeout=120)


def test_responses_plain_and_streamed(oai):
    kw = dict(model="default", input="What is the capital of France?", instructions="Answer in one sentence.",
              max_output_tokens=40, temperature=0)
    whole = oai.responses.create(**kw)
    assert whole.status in ("completed", "incomplete") and "Paris" in whole.output_text
    events = list(oai.responses.create(stream=True, **kw))
    assert events[0].type == "response.created" and events[-1].type == f"response.{whole.status}"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    follow = oai.responses.create(model="default", input="And of Germany?", previous_response_id=whole.id,
                                  max_output_tokens=40, temperature=0)
    assert "Berlin" in follow.output_text


def test_embeddings_rank_paraphrases_first(oai):
    sentences = [s for triple in TRIPLES for s in triple]
    r = oai.embeddings.create(model="default", input=sentences)
    vecs = torch.tensor([d.embedding for d in r.data])
    assert vecs.shape == (len(sentences), 576)  # SmolLM2-135M's width
    assert torch.allclose(vecs.norm(dim=1), torch.ones(len(sentences)), atol=1e-4)
    for i in range(len(TRIPLES)):
        a, para, other = vecs[3 * i:3 * i + 3]
        assert a @ para > a @ other, TRIPLES[i]


def test_messages_plain_streamed_and_counted(real_server):
    client = anthropic.Anthropic(base_url=real_server.url, api_key="x", max_retries=0, timeout=120)
    kw = dict(model="default", max_tokens=40, system="Answer in one sentence.", extra_body={"temperature": 0},
              messages=[{"role": "user", "content": "What is the capital of France?"}])
    whole = client.messages.create(**kw)
    assert "Paris" in whole.content[0].text and whole.stop_reason in ("end_turn", "max_tokens")
    with client.messages.stream(**kw) as stream:
        assert "".join(stream.text_stream) == whole.content[0].text
        assert stream.get_final_message().stop_reason == whole.stop_reason
    counted = client.messages.count_tokens(model="default", system=kw["system"], messages=kw["messages"])
    assert counted.input_tokens == whole.usage.input_tokens + whole.usage.cache_read_input_tokens
