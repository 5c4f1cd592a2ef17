"""/mod gallery hide|unhide in simcord: moderators take a job out of the web gallery and back, audited; members are
refused; a job of another server is not found."""

from __future__ import annotations

from sqlalchemy import select

from bot.db.models import Job


async def hidden_flag(world, job_id: int) -> bool:
    async with world.services.sessions() as s:
        return bool((await s.execute(select(Job.gallery_hidden).where(Job.id == job_id))).scalar_one())


async def posted(world, prompt="a red circle"):
    await world.alice.slash(world.art, "imagine", prompt=prompt)
    job = await world.latest_job()
    await world.finish(job.id)
    return job


async def test_a_moderator_hides_and_shows_a_job_and_each_change_is_audited(world):
    job = await posted(world)
    hidden = await world.mod.slash(world.art, "mod gallery hide", job=job.id)
    assert hidden.ephemeral and f"Job #{job.id} is hidden from the web gallery." in hidden.response.content
    assert "GALLERY_PORT is not set" in hidden.response.content  # this bot serves no gallery: it says so
    assert await hidden_flag(world, job.id)
    again = await world.mod.slash(world.art, "mod gallery hide", job=job.id)
    assert "was already hidden" in again.response.content
    shown = await world.mod.slash(world.art, "mod gallery unhide", job=job.id)
    assert f"Job #{job.id} is no longer hidden" in shown.response.content
    assert not await hidden_flag(world, job.id)
    entries = [(e.action, e.target, e.actor_id, e.details) for e in await world.services.audit.recent(world.guild.id)
               if e.action.startswith("gallery.")]
    assert entries == [("gallery.unhide", f"job:{job.id}", world.mod.id, {"owner": world.alice.id}),
                       ("gallery.hide", f"job:{job.id}", world.mod.id, {"owner": world.alice.id})]
    # The job's Discord message is untouched.
    assert world.last().id == (await world.services.jobs.get(job.id)).posted_message_id


async def test_unhide_links_to_the_job_under_the_public_address(world):
    job = await posted(world)
    world.bot.deps.settings.gallery_public_url = "https://art.example.org/gallery"
    world.bot.deps.settings.gallery_port = 8080
    await world.mod.slash(world.art, "mod gallery hide", job=job.id)
    shown = await world.mod.slash(world.art, "mod gallery unhide", job=job.id)
    assert f"<https://art.example.org/gallery/job/{job.id}>" in shown.response.content
    assert "GALLERY_PORT" not in shown.response.content


async def test_members_can_not_hide_and_other_servers_jobs_are_not_found(world):
    job = await posted(world)
    synced = await world.bot.tree.fetch_commands()
    mod = next(c for c in synced if c.name == "mod")
    world.guild.set_command_permissions(mod.id, {world.alice: True})
    refused = await world.alice.slash(world.art, "mod gallery hide", job=job.id)
    assert refused.ephemeral and "moderators" in refused.response.content.lower()
    assert not await hidden_flag(world, job.id)
    foreign = await world.services.jobs.create(777, 778, world.alice.id, [], prompt="elsewhere", num_images=1)
    for job_id in (foreign.id, 999_999):
        missing = await world.mod.slash(world.art, "mod gallery hide", job=job_id)
        assert missing.ephemeral and f"Job #{job_id} does not exist." in missing.response.content
    assert not await hidden_flag(world, foreign.id)
