"""POST /v1/embeddings through the official `openai` client and raw HTTP: vectors equal to `LLM.embed`, float and
base64, many inputs through a bounded window, every malformed field a 400 naming it, and a disconnect that
frees the engine."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import torch
from openai import OpenAI
from server_helpers import N_CTX, assert_error

from forwardpass import LLM

TEXTS = ["hello world", "the quick brown fox", "jumps over", "a lazy dog sleeps all day long"]


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0)


@pytest.fixture(scope="module")
def reference(tiny_chat_model) -> torch.Tensor:
    return LLM(tiny_chat_model, ctx=N_CTX, threads=1).embed(TEXTS)


def test_openai_client_gets_the_engines_vectors(client, reference):
    r = client.embeddings.create(model="default", input=TEXTS)  # the client asks for base64 and decodes it
    assert [d.index for d in r.data] == list(range(len(TEXTS)))
    got = torch.tensor([d.embedding for d in r.data])
    assert got.shape == reference.shape == (len(TEXTS), 256)
    assert torch.allclose(got.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    assert torch.allclose(got, reference, atol=1e-5)
    assert r.usage.prompt_tokens == r.usage.total_tokens > len(TEXTS)
    assert r.model == "tiny-chat"
    one = client.embeddings.create(model="default", input=TEXTS[1], encoding_format="float", dimensions=256)
    assert torch.allclose(torch.tensor(one.data[0].embedding), reference[1], atol=1e-5)


def test_float_and_base64_agree_and_token_ids_work(server):
    ids = [5, 17, 99, 230]
    floats = server.post("/v1/embeddings", json={"input": [ids, "abc"], "encoding_format": "float"}).json()
    b64 = server.post("/v1/embeddings", json={"input": [ids, "abc"], "encoding_format": "base64"}).json()
    for f, b in zip(floats["data"], b64["data"]):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert np.array_equal(decoded, np.asarray(f["embedding"], dtype=np.float32))
    assert floats["usage"]["prompt_tokens"] >= len(ids) + 1
    single = server.post("/v1/embeddings", json={"input": ids, "encoding_format": "float"}).json()
    assert len(single["data"]) == 1 and single["data"][0]["embedding"] == floats["data"][0]["embedding"]


def test_many_inputs_run_through_a_bounded_window(server):
    """40 inputs on a server of 8 sequences: all come back in order, equal to the same inputs sent alone."""
    inputs = [f"sentence number {i} " * (1 + i % 5) for i in range(40)]
    r = server.post("/v1/embeddings", json={"input": inputs, "encoding_format": "float"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(40))
    for i in (0, 13, 39):
        alone = server.post("/v1/embeddings", json={"input": inputs[i], "encoding_format": "float"}).json()
        assert np.allclose(alone["data"][0]["embedding"], data[i]["embedding"], atol=1e-6)
    idle = server.wait_idle()
    assert idle["forwardpass_kv_blocks_used"] == 0


BAD = [
    ({}, "input"),
    ({"input": None}, "input"),
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["ok", ""]}, "input"),
    ({"input": 5}, "input"),
    ({"input": {"text": "x"}}, "input"),
    ({"input": [1.5, 2]}, "input"),
    ({"input": [[1, 2], []]}, "input"),
    ({"input": [10**7]}, "input"),
    ({"input": [-1]}, "input"),
    ({"input": [True, 3]}, "input"),
    ({"input": ["x"] * 2049}, "input"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "x", "encoding_format": 3}, "encoding_format"),
    ({"input": "x", "dimensions": 64}, "dimensions"),
    ({"input": "x", "dimensions": 0}, "dimensions"),
    ({"input": "x", "dimensions": "256"}, "dimensions"),
    ({"input": "x", "model": 7}, "model"),
]


@pytest.mark.parametrize("body, param", BAD)
def test_malformed_fields_are_400_naming_the_field(server, body, param):
    assert_error(server.post("/v1/embeddings", json=body), 400, "invalid_request_error", param)


def test_unknown_model_and_too_long_input(server):
    assert_error(
        server.post("/v1/embeddings", json={"input": "x", "model": "gpt-9"}), 404, param="model", code="model_not_found"
    )
    err = assert_error(
        server.post("/v1/embeddings", json={"input": [[7] * (N_CTX + 1)]}),
        400,
        param="input",
        code="context_length_exceeded",
    )
    assert err["n_ctx"] == N_CTX and err["n_prompt_tokens"] == N_CTX + 1
    ok = server.post("/v1/embeddings", json={"input": [[7] * N_CTX]})  # a whole context fits: nothing is generated
    assert ok.status_code == 200, ok.text
    assert_error(server.post("/v1/embeddings", content=b'{"input": ["a"'), 400, "invalid_request_error")


def test_disconnect_aborts_the_inputs(server):
    body = {"input": [[(i * 13 + j) % 300 + 4 for j in range(200)] for i in range(256)]}
    before = server.metrics()["forwardpass_prompt_tokens_total"]
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/embeddings", json=body, timeout=0.3)
    idle = server.assert_idle(timeout=5)
    assert idle["forwardpass_prompt_tokens_total"] - before < 256 * 200  # the rest never ran
    assert server.post("/v1/embeddings", json={"input": "still served"}).status_code == 200
