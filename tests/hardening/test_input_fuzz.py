"""Hostile input: every slash command, button, modal and autocomplete of the bot fed with generated values.

A hostile member (or a hand-made request) may send any text and any number, in or out of the ranges the commands
declare. Whatever arrives, the bot must not crash, must answer with a clear message, must never ping anyone, must
keep every message within Discord's limits, and must charge nothing for a request it refuses. Blocked terms must
be caught however they are disguised (case, spacing, zero-width and bidi characters, full-width and symbol letters,
Cyrillic/Greek lookalikes).

Each test records how many generated examples it ran and how many broke a rule (reliability fixture);
`SOAK=1` runs the long form.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.ui.buttons import job_custom_id
from tests.support.hostile import (
    HostileWorld,
    hostile_text,
    leaf_commands,
    options_strategy,
    prompt_with_term,
    recorded,
)
from tests.support.reliability import soak_runs

FUZZ = settings(
    max_examples=soak_runs(60, 1000),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_clear_answer(outcome, what: str) -> None:
    """Answered with something the member can read: the job's message, an embed, or an ephemeral text."""
    outcome.assert_clean(what)
    assert outcome.replies, f"{what}: no answer at all"
    for reply in outcome.replies:
        assert (reply.content or "").strip() or reply.embeds, f"{what}: an empty answer"
    if outcome.refused and outcome.money:
        assert outcome.charged == 0, f"{what}: a refusal charged {outcome.charged}"


def test_imagine_with_hostile_options(tmp_path, migrated_template, reliability):
    """/imagine with generated prompt, negative, seed, steps, guidance, aspect, size, scheduler, count, timeline."""
    with recorded(reliability, "fuzz: /imagine options") as tally, HostileWorld(tmp_path, migrated_template) as hw:
        imagine = hw.w.bot.tree.get_command("imagine")

        @FUZZ
        @given(options=options_strategy(imagine, hw.handles))
        def run(options):
            outcome = hw.run(hw.slash(hw.w.alice, "imagine", options))
            tally.add(outcome)
            assert_clear_answer(outcome, f"/imagine {options!r:.300}")
            if outcome.new_jobs:
                job = outcome.new_jobs[0]
                assert job.prompt.strip() and len(job.prompt) <= 1500 and "\n" not in job.prompt
                # Charged the job's cost in units (its work in credits), nothing more; at most 4 images.
                assert outcome.charged == job.cost > 0 and job.num_images <= 4

        run()


def test_every_command_with_hostile_options(tmp_path, migrated_template, reliability):
    """Every slash command (/quota, /history, /show, /help and each /mod subcommand) by a member or a moderator."""
    with recorded(reliability, "fuzz: every other command's options") as tally, HostileWorld(tmp_path, migrated_template) as hw:
        w = hw.w
        hw.run(hw.slash(w.alice, "imagine", {"prompt": "a red circle"}))
        commands = [c for c in leaf_commands(w.bot.tree) if c.name != "imagine"]
        examples = st.sampled_from(commands).flatmap(
            lambda c: st.tuples(st.just(c.qualified_name), options_strategy(c, hw.handles),
                                st.sampled_from(["alice", "bob", "mod"]))
        )

        @FUZZ
        @given(example=examples)
        def run(example):
            name, options, who = example
            outcome = hw.run(hw.slash(getattr(w, who), name, options))
            tally.add(outcome)
            assert_clear_answer(outcome, f"/{name} {options!r:.300} by {who}")
            if name.startswith("mod") and who != "mod":
                assert outcome.refused and "moderators" in outcome.replies[0].content.lower()

        run()


def test_remix_modal_with_hostile_text(tmp_path, migrated_template, reliability):
    """The ✏️ modal submitted with any prompt and negative prompt, also longer than the modal allows."""
    with recorded(reliability, "fuzz: remix modal text") as tally, HostileWorld(tmp_path, migrated_template) as hw:
        w = hw.w
        hw.run(hw.slash(w.alice, "imagine", {"prompt": "a red circle"}))
        job = hw.run(w.latest_job())
        hw.run(w.finish(job.id))

        @FUZZ
        @given(prompt=hostile_text(1600), negative=st.one_of(st.none(), hostile_text(1600)))
        def run(prompt, negative):
            outcome = hw.run(hw.submit_remix(w.alice, job.id, prompt, negative))
            tally.add(outcome)
            assert_clear_answer(outcome, f"remix {prompt!r:.200} / {negative!r:.100}")

        run()


def test_autocomplete_with_hostile_text(tmp_path, migrated_template, reliability):
    """What a member types into /imagine size and a moderator into /mod terms remove: choices within limits."""
    with recorded(reliability, "fuzz: autocomplete") as tally, HostileWorld(tmp_path, migrated_template) as hw:
        w = hw.w
        hw.run(w.services.moderation.add_blocked_term(w.guild.id, "x" * 40 + " @everyone", w.mod.id))

        @FUZZ
        @given(current=hostile_text(120), which=st.sampled_from(["size", "term"]))
        def run(current, which):
            if which == "size":
                outcome = hw.run(hw.autocomplete(w.alice, "imagine", "size", current))
            else:
                outcome = hw.run(hw.autocomplete(w.mod, "mod terms remove", "term", current))
            tally.add(outcome)
            outcome.assert_clean(f"autocomplete {which} {current!r:.200}")

        run()


def test_every_button_by_anyone(tmp_path, migrated_template, reliability):
    """Every button on a grid, an upscale and the progress messages of waiting jobs (✖), clicked in any order by the
    owner, another member or a moderator: an answer each time, within limits, no crash, no charge for a refusal."""
    with recorded(reliability, "fuzz: job buttons by anyone") as tally, HostileWorld(tmp_path, migrated_template) as hw:
        w = hw.w
        hw.run(hw.slash(w.alice, "imagine", {"prompt": "@everyone **a** red circle <@&1>", "count": 2}))
        job = hw.run(w.latest_job())
        grid = hw.run(w.finish(job.id))
        hw.run(hw.click(w.alice, grid, job_custom_id(job.id, "u", 0)))
        single = hw.run(w.finish(hw.run(w.latest_job()).id))
        progress = [hw.run(hw.slash(w.alice, "imagine", {"prompt": f"||spoiler|| {i} \u202e"})).replies[0].message
                    for i in range(3)]
        messages = [grid, single, *progress]

        def custom_ids(message) -> list[str]:
            stored = hw.env.backend.get_message(message.channel.id, message.id)
            ids = [c.get("custom_id") for row in stored.components for c in row.get("components", [])]
            return [i for i in ids if i and not i.endswith(":d")]  # 🗑️ would delete the message under test

        @FUZZ
        @given(data=st.data(), clicks=st.integers(1, 4))
        def run(data, clicks):
            for _ in range(clicks):
                who = data.draw(st.sampled_from(["alice", "bob", "mod"]))
                message = data.draw(st.sampled_from(messages))
                ids = custom_ids(message)
                if not ids:  # a cancelled job's message has no buttons left
                    continue
                custom_id = data.draw(st.sampled_from(ids))
                outcome = hw.run(hw.click(getattr(w, who), message, custom_id))
                tally.add(outcome)
                if custom_id.endswith(":e") and outcome.result.modal is not None:
                    outcome.assert_clean(f"{custom_id} by {who}")
                else:
                    assert_clear_answer(outcome, f"{custom_id} by {who}")

        run()


TERMS = ["gore", "nsfw", "blood bath", "nude"]


def test_disguised_blocked_terms_are_refused(tmp_path, migrated_template, reliability):
    """A blocked term disguised with case, spacing, zero-width/bidi characters, accents, full-width or symbol letters
    and Cyrillic/Greek lookalikes is still refused, in /imagine and in the remix modal, and nothing is charged."""
    with recorded(reliability, "fuzz: disguised blocked terms") as tally, HostileWorld(tmp_path, migrated_template) as hw:
        w = hw.w
        for term in TERMS:
            hw.run(w.services.moderation.add_blocked_term(w.guild.id, term, w.mod.id))
        hw.run(w.services.moderation.add_blocked_term(w.guild.id, "porn*", w.mod.id))
        hw.run(hw.slash(w.alice, "imagine", {"prompt": "a red circle"}))
        job = hw.run(w.latest_job())
        hw.run(w.finish(job.id))

        @FUZZ
        @given(term=st.sampled_from(TERMS).flatmap(lambda t: st.tuples(st.just(t), prompt_with_term(t))),
               via_remix=st.booleans())
        def run(term, via_remix):
            term, prompt = term
            if via_remix:
                outcome = hw.run(hw.submit_remix(w.alice, job.id, prompt))
            else:
                outcome = hw.run(hw.slash(w.alice, "imagine", {"prompt": prompt}))
            tally.add(outcome)
            caught = outcome.refused and "blocked term" in outcome.replies[0].content
            if not caught:
                tally.failures += 1
            assert_clear_answer(outcome, repr(prompt))
            assert caught, f"{prompt!r} ({prompt.encode('unicode_escape')!r}) got past the blocked term {term!r}"
            assert outcome.charged == 0 and not outcome.new_jobs

        run()
