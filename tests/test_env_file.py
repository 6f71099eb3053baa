""".env values reach MySQL as written: no `$VAR` expansion, quoted spaces kept."""

from __future__ import annotations

import pytest

# ${HOME} is set in the job's environment: an expanding reader would change this password.
DOLLAR_PASSWORD = "pa$word${HOME}x"
PADDED_PASSWORD = " padded pw "


@pytest.mark.parametrize(
    ("password", "line"),
    [
        (DOLLAR_PASSWORD, "MYSQL_PASSWORD=pa$word${HOME}x"),
        (DOLLAR_PASSWORD, "MYSQL_PASSWORD='pa$word${HOME}x'"),
        (DOLLAR_PASSWORD, 'MYSQL_PASSWORD="pa$word${HOME}x"'),
        (DOLLAR_PASSWORD, "MYSQL_PASSWORD=  pa$word${HOME}x   # unquoted: trimmed"),
        (PADDED_PASSWORD, 'MYSQL_PASSWORD=" padded pw "'),
        (PADDED_PASSWORD, "MYSQL_PASSWORD=' padded pw '"),
    ],
    ids=["unquoted", "single", "double", "unquoted-spaces", "double-padded", "single-padded"],
)
def test_the_password_in_env_file_reaches_mysql_unchanged(
    job, sandbox, seeded_db, app_user, password, line
):
    user = app_user(seeded_db, password=password)
    env_file = job.workdir / "settings.env"
    env_file.write_text(f"MYSQL_USER={user.user}\n{line}\n")
    # The environment would win over the file: the user and password come from the file only.
    run = job.run("--check", "--env-file", str(env_file), MYSQL_USER=None, MYSQL_PASSWORD=None)
    assert run.code == 0, run.stdout + run.stderr
    assert "database: ok: connected to database" in run.stdout


def test_a_run_connects_with_a_dollar_password(job, sandbox, seeded_db, app_user):
    user = app_user(seeded_db, password=DOLLAR_PASSWORD)
    env_file = job.workdir / "settings.env"
    env_file.write_text(f'MYSQL_USER={user.user}\nMYSQL_PASSWORD="{DOLLAR_PASSWORD}"\n')
    run = job.run("--env-file", str(env_file), MYSQL_USER=None, MYSQL_PASSWORD=None)
    assert run.code == 1, run.stderr  # the seed's malformed email
    assert run.results["summary"]["succeeded"] == 6
    assert len(sandbox.users()) == 6
