"""The `openai` provider against the fake upstream: wire format, usage, retries and every failure."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import unused_port
from hypothesis import given
from hypothesis import strategies as st
from openai import AsyncOpenAI

from service.providers import (
    ChatTurn,
    CompletionRequest,
    ProviderError,
    ProviderTimeout,
    ReplyStream,
    TokenCounter,
    cut_to_budget,
    estimate_prompt_tokens,
)
from service.providers.offline import OfflineModel
from service.providers.openai import OpenAIProvider, estimate_tokens
from tests.providers.fake_openai import DEFAULT_REPLY, Behavior, FakeOpenAI, prompt_tokens_of

REQUEST = CompletionRequest(
    system_prompt="You are terse.",
    context=[ChatTurn(True, "Earlier question"), ChatTurn(False, "Earlier answer")],
    user_content="Tell me about foxes",
    max_tokens=100,
)


async def _collect(stream: ReplyStream) -> list[str]:
    return [delta async for delta in stream.deltas()]


class TestWireFormat:
    @pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
    async def test_sends_what_the_official_client_sends(
        self, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider, stream: bool
    ) -> None:
        """Path, bearer key, content type and body (model, messages, max_tokens, stream,
        stream_options) are those the official `openai` client sends for the same call."""
        if stream:
            await _collect(await openai_provider.open_stream(REQUEST))
        else:
            await openai_provider.complete(REQUEST)
        client = AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test-key", max_retries=0)
        body = fake_openai.requests[0].body
        extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
        answer = await client.chat.completions.create(
            model="fake-model", messages=body["messages"], max_tokens=100, stream=stream, **extra
        )
        if stream:
            async for _chunk in answer:  # type: ignore[union-attr]
                pass
        await client.close()
        ours, theirs = fake_openai.requests
        assert ours.path == theirs.path == "/v1/chat/completions"
        for header in ("Authorization", "Content-Type"):
            assert ours.headers[header] == theirs.headers[header]
        assert ours.headers["Authorization"] == "Bearer sk-test-key"
        assert ours.body == theirs.body

    async def test_messages_carry_the_system_prompt_history_and_overrides(
        self, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
    ) -> None:
        """The system prompt, the history in order with its roles, the new message, the config's model
        and temperature, and the hold's max_tokens are what the upstream gets."""
        request = msgspec_replace(REQUEST, model="config-model", temperature=0.2, max_tokens=7)
        await openai_provider.complete(request)
        body = fake_openai.requests[0].body
        assert body["messages"] == [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Earlier question"},
            {"role": "assistant", "content": "Earlier answer"},
            {"role": "user", "content": "Tell me about foxes"},
        ]
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("config-model", 0.2, 7)
        assert body["stream"] is False
        assert "stream_options" not in body

    async def test_no_key_no_authorization_header(self, fake_openai: FakeOpenAI) -> None:
        """Servers that need no key (Ollama, a local vLLM) get no Authorization header, and no model
        override means the provider's model."""
        provider = OpenAIProvider(base_url=fake_openai.base_url + "/", api_key=None, model="local")
        try:
            await provider.complete(REQUEST)
        finally:
            await provider.close()
        assert "Authorization" not in fake_openai.requests[0].headers
        assert fake_openai.requests[0].body["model"] == "local"

    async def test_the_fake_speaks_the_real_format(self, fake_openai: FakeOpenAI) -> None:
        """The official client parses the fake's answers: usage on the last chunk only when
        include_usage asks for it (so the fake is a fair stand-in for a real server)."""
        client = AsyncOpenAI(base_url=fake_openai.base_url, api_key="k", max_retries=0)
        messages: Any = [{"role": "user", "content": "hi"}]
        whole = await client.chat.completions.create(model="m", messages=messages, max_tokens=3)
        assert whole.choices[0].message.content == "The quick brown"
        assert whole.choices[0].finish_reason == "length"
        assert whole.usage is not None
        assert whole.usage.completion_tokens == 3
        for include_usage in (True, False):
            chunks = [
                chunk
                async for chunk in await client.chat.completions.create(
                    model="m",
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": include_usage},
                )
            ]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == "".join(DEFAULT_REPLY)
            usage = chunks[-1].usage
            assert (usage is not None) is include_usage
        await client.close()


class TestUsage:
    async def test_whole_reply_charges_the_upstreams_usage(
        self, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
    ) -> None:
        """With usage in the answer, the counts are the upstream's, not the estimate."""
        completion = await openai_provider.complete(REQUEST)
        assert completion.content == "".join(DEFAULT_REPLY)
        assert completion.prompt_tokens == prompt_tokens_of(fake_openai.requests[0].body)
        assert completion.prompt_tokens != estimate_prompt_tokens(REQUEST, estimate_tokens)
        assert (completion.completion_tokens, completion.truncated, completion.estimated) == (
            10,
            False,
            False,
        )

    async def test_streamed_and_whole_replies_count_the_same(
        self, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
    ) -> None:
        """A stream with include_usage yields the same text and the same counts as the JSON answer."""
        whole = await openai_provider.complete(REQUEST)
        stream = await openai_provider.open_stream(REQUEST)
        deltas = await _collect(stream)
        assert deltas == DEFAULT_REPLY
        assert stream.completion() == whole

    @pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
    async def test_no_usage_is_estimated_and_flagged(
        self, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider, stream: bool
    ) -> None:
        """Without usage, the prompt is the service's estimate and the reply one token per streamed
        delta (or the estimator's count of the text); the completion says it is estimated."""
        fake_openai.default = Behavior(usage=False)
        if stream:
            reply = await openai_provider.open_stream(REQUEST)
            await _collect(reply)
            completion = reply.completion()
        else:
            completion = await openai_provider.complete(REQUEST)
        assert completion.estimated
        assert completion.prompt_tokens == estimate_prompt_tokens(REQUEST, estimate_tokens)
        assert completion.completion_tokens == 10

    @pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
    async def test_reply_cut_at_max_tokens_is_truncated(
        self, openai_provider: OpenAIProvider, stream: bool
    ) -> None:
        """finish_reason "length" marks the reply truncated; it has exactly max_tokens tokens."""
        request = msgspec_replace(REQUEST, max_tokens=4)
        if stream:
            reply = await openai_provider.open_stream(request)
            await _collect(reply)
            completion = reply.completion()
        else:
            completion = await openai_provider.complete(request)
        assert (completion.content, completion.completion_tokens) == ("The quick brown fox", 4)
        assert completion.truncated

    async def test_a_stream_stopped_after_k_deltas_prices_prompt_plus_k(
        self, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
    ) -> None:
        """Closing a stream after k deltas drops the upstream connection (the upstream sees the
        disconnect) and prices the estimated prompt plus k tokens, truncated and estimated."""
        fake_openai.plan(Behavior(pause_after=3))
        reply = await openai_provider.open_stream(REQUEST)
        deltas = reply.deltas()
        received = [await anext(deltas) for _ in range(3)]
        await fake_openai.paused.wait()
        await deltas.aclose()
        await reply.aclose()
        await fake_openai.disconnected.wait()
        partial = reply.partial()
        assert partial.content == "".join(received) == "The quick brown"
        assert partial.prompt_tokens == estimate_prompt_tokens(REQUEST, estimate_tokens)
        assert (partial.completion_tokens, partial.truncated, partial.estimated) == (3, True, True)


class TestRetries:
    @pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
    async def test_429_and_500_are_retried_before_the_first_byte(
        self, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider, stream: bool
    ) -> None:
        """A 429 then a 500 then a good answer: the reply arrives after two retries."""
        fake_openai.plan(Behavior(status=429), Behavior(status=500))
        if stream:
            text = "".join(await _collect(await openai_provider.open_stream(REQUEST)))
        else:
            text = (await openai_provider.complete(REQUEST)).content
        assert text == "".join(DEFAULT_REPLY)
        assert len(fake_openai.requests) == 3

    @pytest.mark.parametrize("status", [429, 500, 503])
    async def test_retries_are_bounded(
        self, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider, status: int
    ) -> None:
        """An upstream that keeps failing gets 1 + max_retries attempts, then a ProviderError."""
        fake_openai.default = Behavior(status=status)
        with pytest.raises(ProviderError, match=str(status)) as caught:
            await openai_provider.complete(REQUEST)
        assert not isinstance(caught.value, ProviderTimeout)
        assert len(fake_openai.requests) == 3

    @pytest.mark.parametrize("status", [400, 401, 404])
    async def test_final_statuses_are_not_retried(
        self, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider, status: int
    ) -> None:
        """A bad key or an unknown model is a ProviderError at once: retrying cannot help."""
        fake_openai.default = Behavior(status=status)
        with pytest.raises(ProviderError):
            await openai_provider.open_stream(REQUEST)
        assert len(fake_openai.requests) == 1

    async def test_a_slow_first_byte_is_retried(
        self, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
    ) -> None:
        """An attempt with no answer within the read timeout is dropped and retried."""
        fake_openai.plan(Behavior(hang=True))
        assert (await openai_provider.complete(REQUEST)).content == "".join(DEFAULT_REPLY)
        assert len(fake_openai.requests) == 2

    @pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
    async def test_an_upstream_that_never_answers_times_out(
        self, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider, stream: bool
    ) -> None:
        """Every attempt slow: ProviderTimeout (504) after 1 + max_retries attempts."""
        fake_openai.default = Behavior(hang=True)
        call = openai_provider.open_stream if stream else openai_provider.complete
        with pytest.raises(ProviderTimeout):
            await call(REQUEST)
        assert len(fake_openai.requests) == 3

    async def test_the_total_timeout_bounds_the_retries(self, fake_openai: FakeOpenAI) -> None:
        """With a total below one read timeout, the first slow attempt is the last."""
        fake_openai.default = Behavior(hang=True)
        provider = OpenAIProvider(
            base_url=fake_openai.base_url, api_key=None, model="m", read_timeout_s=5, total_timeout_s=0.2
        )
        try:
            with pytest.raises(ProviderTimeout):
                await provider.complete(REQUEST)
        finally:
            await provider.close()
        assert len(fake_openai.requests) == 1

    async def test_connection_refused_is_retried_then_fails(self) -> None:
        """Nothing listening: every attempt fails to connect, then a ProviderError."""
        provider = OpenAIProvider(
            base_url=f"http://127.0.0.1:{unused_port()}/v1", api_key=None, model="m", retry_backoff_s=0
        )
        try:
            with pytest.raises(ProviderError, match="Could not reach"):
                await provider.complete(REQUEST)
        finally:
            await provider.close()


class TestBrokenAnswers:
    @pytest.mark.parametrize(
        "behavior",
        [Behavior(malformed=True), Behavior(deep_json=True), Behavior(reply=[]), Behavior(reply=[""])],
        ids=["malformed", "deep-json", "no-content", "empty-content"],
    )
    async def test_broken_whole_answers_fail_without_retry(
        self, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider, behavior: Behavior
    ) -> None:
        """A 200 whose body is not a usable completion is a ProviderError; the model has answered, so
        it is not asked again."""
        fake_openai.default = behavior
        with pytest.raises(ProviderError):
            await openai_provider.complete(REQUEST)
        assert len(fake_openai.requests) == 1

    @pytest.mark.parametrize(
        ("behavior", "delivered"),
        [
            (Behavior(cut_after=3), 3),
            (Behavior(malformed=True), 1),
            (Behavior(deep_json=True), 1),
            (Behavior(error_after=2), 2),
            (Behavior(reply=[]), 0),
        ],
        ids=["cut-connection", "malformed-chunk", "deep-json-chunk", "error-chunk", "empty"],
    )
    async def test_broken_streams_fail_after_their_good_deltas(
        self,
        fake_openai: FakeOpenAI,
        openai_provider: OpenAIProvider,
        behavior: Behavior,
        delivered: int,
    ) -> None:
        """The deltas before the break are delivered, then a ProviderError; no retry."""
        fake_openai.default = behavior
        reply = await openai_provider.open_stream(REQUEST)
        received: list[str] = []

        async def read_all() -> None:
            async for delta in reply.deltas():
                received.append(delta)

        with pytest.raises(ProviderError):
            await read_all()
        assert received == DEFAULT_REPLY[:delivered]
        assert len(fake_openai.requests) == 1

    async def test_a_stream_that_stalls_mid_reply_times_out(
        self, fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
    ) -> None:
        """A stream silent past the read timeout mid-reply is a ProviderTimeout."""
        fake_openai.default = Behavior(pause_after=2)
        reply = await openai_provider.open_stream(REQUEST)
        with pytest.raises(ProviderTimeout):
            await _collect(reply)


class TestEstimator:
    @pytest.mark.parametrize(
        ("text", "tokens"),
        [
            ("", 0),
            ("Hello there", 2),
            ("a b c", 3),
            ("internationalization!", 5),
            ("12345678", 3),
            ("日本語", 3),
            ("é", 1),
        ],
    )
    def test_counts(self, text: str, tokens: int) -> None:
        """ASCII letters cost a token per 5, digits per 3, anything else visible one each."""
        assert estimate_tokens(text) == tokens

    @given(st.text(alphabet=st.sampled_from("aZ09 \n\t.,é日-_") | st.characters(), max_size=3000))
    def test_the_count_is_the_rule_spelled_out(self, text: str) -> None:
        """The one-pattern count equals the rule piece by piece, short texts (remembered) and long."""
        expected = 0
        for piece in re.findall(r"[A-Za-z]+|[0-9]+|\S", text):
            per_token = 5 if piece[0].isalpha() and piece.isascii() else 3 if piece[0].isdigit() else 1
            expected += -(-len(piece) // per_token)
        assert estimate_tokens(text) == expected


def msgspec_replace(request: CompletionRequest, **changes: Any) -> CompletionRequest:
    import msgspec

    return msgspec.structs.replace(request, **changes)


class TestCutToBudget:
    @pytest.mark.parametrize(
        "count", [estimate_tokens, OfflineModel().count_tokens], ids=["estimator", "offline"]
    )
    @given(text=st.text(alphabet=st.sampled_from("ab1 .é\n"), max_size=60), budget=st.integers(1, 12))
    def test_the_longest_prefix_that_fits(self, count: TokenCounter, text: str, budget: int) -> None:
        """A text within its budget is kept whole; a longer one is cut to a prefix of at most `budget`
        tokens, such that reaching its next visible character would pass the budget."""
        cut = cut_to_budget(text, budget, count)
        assert text.startswith(cut)
        assert count(cut) <= budget
        if count(text) <= budget:
            assert cut == text
        else:
            rest = text[len(cut) :]
            next_visible = len(cut) + len(rest) - len(rest.lstrip()) + 1
            assert count(text[:next_visible]) > budget
