"""The fake Discord's channel history (GET /channels/{id}/messages) and its forgetting of message nonces."""

from __future__ import annotations

import aiohttp

from tests.support.fakediscord import FakeDiscord


async def test_history_lists_newest_first_with_limit_before_after_and_around():
    async with FakeDiscord() as fd, aiohttp.ClientSession(headers={"Authorization": f"Bot {fd.token}"}) as http:
        art = fd.add_channel("art")
        other = fd.add_channel("other")
        url = f"{fd.api_base}/channels/{art['id']}/messages"
        ids = []
        for i in range(6):
            async with http.post(url, json={"content": f"m{i}"}) as r:
                ids.append((await r.json())["id"])
        async with http.post(f"{fd.api_base}/channels/{other['id']}/messages", json={"content": "elsewhere"}):
            pass

        async def history(**query):
            async with http.get(url, params={k: str(v) for k, v in query.items()}) as r:
                assert r.status == 200
                return [m["id"] for m in await r.json()]

        assert await history() == ids[::-1]
        assert await history(limit=2) == [ids[5], ids[4]]
        assert await history(limit=2, before=ids[3]) == [ids[2], ids[1]]
        assert await history(limit=2, after=ids[1]) == [ids[3], ids[2]]
        assert await history(limit=3, around=ids[3]) == [ids[4], ids[3], ids[2]]
        async with http.get(f"{fd.api_base}/channels/1/messages") as r:
            assert r.status == 404
        assert fd.unhandled == []


async def test_a_forgotten_nonce_lets_the_same_post_make_a_second_message():
    async with FakeDiscord() as fd, aiohttp.ClientSession(headers={"Authorization": f"Bot {fd.token}"}) as http:
        art = fd.add_channel("art")
        url = f"{fd.api_base}/channels/{art['id']}/messages"
        body = {"content": "result", "nonce": "imagine-job-1", "enforce_nonce": True}
        async with http.post(url, json=body) as r:
            first = (await r.json())["id"]
        async with http.post(url, json=body) as r:
            assert (await r.json())["id"] == first  # remembered: the first message again
        fd.forget_nonces()
        async with http.post(url, json=body) as r:
            assert (await r.json())["id"] != first
        assert len(fd.channel_messages(art["id"])) == 2
