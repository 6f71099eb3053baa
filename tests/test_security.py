"""Security properties of the job, checked against real parts.

TLS to MySQL (a plaintext server, a TLS-only server with our own CA, a wrong CA, a host
name the certificate lacks), TLS to Iterable (verification on; plain http only for a
loopback host, for the monitoring URL too), the API key never taken from the command
line, private files whatever the umask, and no secret or unmasked email in any log or
console output.
"""

from __future__ import annotations

import http.server
import json
import re
import ssl
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import mysql.connector
import pytest

from db_connection import ConnectionSettings, DatabaseConnection, DatabaseError
from devtools.mariadb_server import (
    INSTALL_HINT,
    Database,
    ThrowawayMariaDB,
    server_binaries_available,
)
from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER, SEED_QUALIFYING
from sandbox import DEFAULT_API_KEY as API_KEY
from settings import ConfigError, load_settings
from tests.support.prerequisites import prerequisite_missing
from tests.support.tls import TlsFiles, make_tls_files

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SETUP_SQL = PROJECT_ROOT / "sql" / "database_setup.sql"
# An address that is not masked: at least one character of the local part before the @.
UNMASKED_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
SENT = len(SEED_QUALIFYING) - 1  # every seeded pro customer but the malformed email


def error_line(run) -> str:
    """The one line an expected failure prints (DEBUG console output may follow it)."""
    lines = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, run.stderr
    return lines[0]


def assert_refused(run, code: int, *fragments: str) -> None:
    assert run.code == code, run.stdout + run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    line = error_line(run)
    for fragment in fragments:
        assert fragment in line, line


@pytest.fixture
def empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings loaded in-process read ./.env and check ./ is writable: use an empty dir."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def settings_problem(argv: list[str], env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(argv, env)
    return str(caught.value)


# -- certificates made with trustme ------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_db(tls_files: TlsFiles) -> Iterator[Database]:
    """A second server that speaks TLS only, seeded, with a SELECT-only user."""
    if not server_binaries_available():
        prerequisite_missing(f"MariaDB binaries not found: {INSTALL_HINT}; the TLS tests need them")
    args = [
        f"--ssl-ca={tls_files.ca}",
        f"--ssl-cert={tls_files.server_cert}",
        f"--ssl-key={tls_files.server_key}",
        "--require-secure-transport=ON",
    ]
    with ThrowawayMariaDB(extra_args=args) as server:
        assert server.execute("SHOW VARIABLES LIKE 'have_ssl'") == [("have_ssl", "YES")]
        name = f"tls_{uuid.uuid4().hex[:8]}"
        server.create_database(name)
        server.load_sql_file(SETUP_SQL, name)
        yield server.create_user(f"app_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex, name)


def mysql_env(db: Database, **extra: str) -> dict[str, str | None]:
    return {
        "MYSQL_HOST": db.host,
        "MYSQL_PORT": str(db.port),
        "MYSQL_USER": db.user,
        "MYSQL_PASSWORD": db.password,
        "MYSQL_DATABASE": db.name,
        **extra,
    }


def connection(db: Database, **changes: object) -> ConnectionSettings:
    settings = ConnectionSettings(db.host, db.port, db.user, db.password, db.name)
    return replace(settings, **changes)  # type: ignore[arg-type]


# -- (a) MYSQL_SSL_CA against a server that offers no TLS ----------------------------------


def test_ssl_ca_against_a_plaintext_server_is_refused(job, sandbox, tls_files):
    run = job.run(MYSQL_SSL_CA=str(tls_files.ca))
    assert_refused(run, 3, "did not negotiate TLS", "MYSQL_SSL_CA")
    assert sandbox.stats()["total_requests"] == 0
    assert run.results["results"] == []
    assert "did not negotiate TLS" in run.results["run"]["aborted"]


def test_the_connector_itself_refuses_plaintext_when_asked_for_tls(seeded_db, tls_files):
    """What mysql-connector (pure Python, as the job uses it) does without our check."""
    common = seeded_db.connect_args() | {"use_pure": True}
    plain = mysql.connector.connect(**common)
    try:
        cursor = plain.cursor()
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        assert cursor.fetchall() == [("Ssl_cipher", "")]  # the test server has no TLS
    finally:
        plain.close()
    with pytest.raises(mysql.connector.Error) as caught:
        mysql.connector.connect(
            **common, ssl_ca=str(tls_files.ca), ssl_verify_cert=True, ssl_disabled=False
        )
    assert caught.value.errno == 2026  # CR_SSL_CONNECTION_ERROR: "SSL is required but ..."


def test_the_tls_check_refuses_a_plaintext_session_whatever_the_connector_did(seeded_db, tls_files):
    """The Ssl_cipher check on a real plaintext session: the guard for connector builds
    (such as the C extension with ssl_verify_cert alone) that fall back to plaintext."""
    db = DatabaseConnection(connection(seeded_db))
    db.connect()
    assert db.scalar("SHOW SESSION STATUS LIKE 'Ssl_cipher'", column=1) == ""
    db.settings = connection(seeded_db, ssl_ca=tls_files.ca)
    with pytest.raises(DatabaseError, match="did not negotiate TLS although MYSQL_SSL_CA"):
        db._require_tls()
    assert db._connection is None  # closed before anything else was sent


# -- (b) a TLS-only server -----------------------------------------------------------------


def test_tls_with_the_right_ca_succeeds_and_is_encrypted(job, sandbox, tls_db, tls_files):
    with DatabaseConnection(connection(tls_db, ssl_ca=tls_files.ca)) as db:
        cipher = db.scalar("SHOW SESSION STATUS LIKE 'Ssl_cipher'", column=1)
        version = db.scalar("SHOW SESSION STATUS LIKE 'Ssl_version'", column=1)
    assert cipher and version.startswith("TLSv1.")
    run = job.run(**mysql_env(tls_db, MYSQL_SSL_CA=str(tls_files.ca)))
    assert run.code == 1, run.stderr  # the seed's malformed email; everything else was sent
    assert run.results["summary"]["succeeded"] == SENT
    assert len(sandbox.users()) == SENT
    assert re.search(r"connected to MySQL at .* over TLSv1\.\d \(\S+\)", job.log_file.read_text())


def test_verify_identity_with_a_name_on_the_certificate_succeeds(job, sandbox, tls_db, tls_files):
    env = mysql_env(tls_db, MYSQL_SSL_CA=str(tls_files.ca), MYSQL_SSL_VERIFY_IDENTITY="true")
    run = job.run(**{**env, "MYSQL_HOST": "localhost"})
    assert run.code == 1, run.stderr
    assert run.results["summary"]["succeeded"] == SENT


def test_verify_identity_with_a_name_the_certificate_lacks_is_refused(
    job, sandbox, tls_db, tls_files
):
    env = mysql_env(tls_db, MYSQL_SSL_CA=str(tls_files.ca), MYSQL_SSL_VERIFY_IDENTITY="true")
    run = job.run(**{**env, "MYSQL_HOST": "127.0.0.1"})
    assert_refused(run, 3, "certificate", "127.0.0.1")
    assert sandbox.stats()["total_requests"] == 0


def test_a_wrong_ca_is_refused(job, sandbox, tls_db, tls_files):
    run = job.run(**mysql_env(tls_db, MYSQL_SSL_CA=str(tls_files.other_ca)))
    assert_refused(run, 3, "certificate", "MYSQL_SSL_CA")
    assert sandbox.stats()["total_requests"] == 0


# -- TLS to Iterable -----------------------------------------------------------------------


# Both URL settings follow one rule: https, or plain http to a loopback host only (the
# local sandbox, a monitoring agent on the same machine). None: the URL is accepted.
URL_VARIABLES = {"ITERABLE_BASE_URL": "iterable_base_url", "HEALTHCHECK_URL": "healthcheck_url"}
URLS = [
    ("https://api.iterable.com", None),
    ("https://api.eu.iterable.com/", None),
    ("http://127.0.0.1:8080", None),
    ("http://127.9.9.9:8080", None),
    ("http://localhost:8080/", None),
    ("http://LOCALHOST:8080", None),
    ("http://[::1]:8080", None),
    ("http://api.iterable.com", "must use https; plain http is allowed only for a loopback host"),
    ("http://10.0.0.7:8080", "must use https"),
    ("http://0.0.0.0:8080", "must use https"),
    ("http://localhost.example.com", "must use https"),
    ("http://127.0.0.1.example.com", "must use https"),
    ("http://[::ffff:10.0.0.1]:8080", "must use https"),
    ("http://user:secret@127.0.0.1:8080", "must not carry credentials"),
    ("https://api.iterable.com/?region=us", "must not carry credentials, a query or a fragment"),
    ("ftp://127.0.0.1/", "must be an https URL"),
    ("api.iterable.com", "must be an https URL"),
    ("not a url", "must be an https URL"),
    ("https://api.iterable.com:99999", "has an invalid port"),
]


@pytest.mark.parametrize(("url", "problem"), URLS)
def test_urls_accepted_and_refused(empty_dir, url, problem):
    for variable, attribute in URL_VARIABLES.items():
        env = {"MYSQL_USER": "u", "MYSQL_DATABASE": "d", "ITERABLE_API_KEY": "k", variable: url}
        if problem is None:
            assert getattr(load_settings([], env), attribute) == url.rstrip("/"), variable
        else:
            assert f"{variable} {problem}" in settings_problem([], env)


def test_plain_http_to_a_non_loopback_host_is_refused_before_anything_is_sent(job, sandbox):
    # 0.0.0.0 reaches the sandbox's 127.0.0.1 listener on Linux, so "nothing was sent" is
    # observable; it is not a loopback address and must be refused.
    url = sandbox.base_url.replace("127.0.0.1", "0.0.0.0")
    run = job.run(ITERABLE_BASE_URL=url)
    assert_refused(run, 2, "ITERABLE_BASE_URL must use https")
    assert sandbox.stats()["total_requests"] == 0
    assert run.results_path is None


class _Recorder(http.server.BaseHTTPRequestHandler):
    paths: list[str]

    def do_POST(self) -> None:
        self.paths.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"msg": "", "code": "Success", "params": null}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def untrusted_https(tls_files) -> Iterator[tuple[str, list[str]]]:
    """An https server on 127.0.0.1 whose certificate no public CA signed."""
    paths: list[str] = []
    handler = type("Handler", (_Recorder,), {"paths": paths})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}", paths
    finally:
        server.shutdown()
        server.server_close()


def test_an_untrusted_certificate_fails_every_row_and_sends_nothing(job, untrusted_https):
    url, paths = untrusted_https
    run = job.run(ITERABLE_BASE_URL=url, MAX_ATTEMPTS="1")
    assert run.code == 1, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert paths == []  # no request got past the handshake
    rows = [r for r in run.results["results"] if r["customer_id"] != SEED_MALFORMED_EMAIL_CUSTOMER]
    assert len(rows) == SENT
    for row in rows:
        assert (row["status"], row["reason"]) == ("failed", "no_response")
        assert "CERTIFICATE_VERIFY_FAILED" in row["user_update"]["error"]
        assert row["event_track"] is None
    assert f"0 succeeded, {SENT + 1} failed" in run.stdout


def test_the_same_server_is_trusted_once_its_ca_is_configured(job, untrusted_https, tls_files):
    """The control: the failure above is certificate verification, nothing else."""
    url, paths = untrusted_https
    run = job.run(ITERABLE_BASE_URL=url, MAX_ATTEMPTS="1", REQUESTS_CA_BUNDLE=str(tls_files.ca))
    assert run.code == 1, run.stderr
    assert run.results["summary"]["succeeded"] == SENT
    assert paths.count("/api/users/update") == SENT


# -- the API key never comes from the command line -----------------------------------------

CLI_SECRET = "sk-cli-0123456789abcdef"


@pytest.mark.parametrize(
    "args",
    [
        ("--api-key", CLI_SECRET),
        (f"--api-key={CLI_SECRET}",),
        (f"--iterable-api-key={CLI_SECRET}",),
        ("--iterable-api-key", CLI_SECRET),
        ("--ITERABLE_API_KEY", CLI_SECRET),
        ("--check", "--key", CLI_SECRET),
        (CLI_SECRET,),
    ],
)
def test_api_key_on_the_command_line_is_refused_and_not_echoed(empty_dir, args):
    message = settings_problem(list(args), {})
    assert "unrecognized arguments" in message
    assert CLI_SECRET not in message
    if any("key" in a.lower() for a in args if a.startswith("-")):
        assert "read from ITERABLE_API_KEY only" in message


def test_a_key_on_the_command_line_stops_the_job_before_it_writes_anything(job, sandbox):
    run = job.run(f"--api-key={CLI_SECRET}")
    assert_refused(run, 2, "unrecognized arguments: --api-key", "read from ITERABLE_API_KEY only")
    assert CLI_SECRET not in run.stderr + run.stdout
    # Refused before logging starts: no log file, and no file anywhere holds the key.
    assert not job.log_file.exists()
    written = [p for p in job.workdir.rglob("*") if p.is_file()]
    assert all(CLI_SECRET.encode() not in p.read_bytes() for p in written), written
    assert sandbox.stats()["total_requests"] == 0


# -- private files ------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_file_is_private_even_under_a_permissive_umask(job):
    metrics = job.workdir / "metrics.prom"
    done = subprocess.run(
        job.command(),
        cwd=job.workdir,
        env=job.environment(METRICS_FILE=str(metrics)),
        capture_output=True,
        text=True,
        timeout=120,
        umask=0,
    )
    assert done.returncode == 1, done.stderr
    results = list(job.results_dir.glob("integration_results_*.json"))
    state_files = list(job.workdir.glob("state.sqlite3*"))
    files = [*results, job.log_file, job.state_file, metrics, Path(job.env["LOCK_FILE"])]
    assert len(results) == 1 and job.state_file in state_files
    for path in [*files, *state_files]:
        assert mode(path) == 0o600, f"{path.name} is {oct(mode(path))}"
    assert sorted(p.name for p in job.results_dir.iterdir()) == [results[0].name]


def test_looser_files_left_by_someone_else_are_tightened(job):
    job.log_file.write_text("an older line\n")
    job.log_file.chmod(0o666)
    metrics = job.workdir / "metrics.prom"
    metrics.write_text("# old\n")
    metrics.chmod(0o644)
    job.run(METRICS_FILE=str(metrics))
    job.state_file.chmod(0o644)
    job.run(METRICS_FILE=str(metrics))
    assert mode(job.log_file) == 0o600
    assert job.log_file.read_text().startswith("an older line\n")  # appended, not replaced
    assert mode(metrics) == 0o600 and mode(job.state_file) == 0o600


# -- no secret and no unmasked email in logs or console output ------------------------------


def emails_by_customer(job) -> dict[int, str]:
    return {cid: row["email"] for cid, row in job.run("--dry-run").by_customer().items()}


def test_no_secret_or_email_leaks_in_a_run_with_failures(job, sandbox):
    emails = emails_by_customer(job)
    password = job.env["MYSQL_PASSWORD"]
    echo = {"code": "InvalidEmailAddressError", "params": None}
    sandbox.add_fault(
        "status",
        endpoint="users/update",
        email=emails[1],
        status=400,
        body=json.dumps({**echo, "msg": f"Invalid email: {emails[1]}"}),
    )
    sandbox.add_fault(
        "status", endpoint="users/update", email=emails[2], status=503, times=2, retry_after=0
    )
    sandbox.add_fault(
        "status", endpoint="events/track", email=emails[3], status=429, times=1, retry_after=0
    )
    # An upstream that echoes what it was sent: the key comes back in an error message.
    sandbox.add_fault(
        "status",
        endpoint="events/track",
        email=emails[5],
        status=400,
        body=json.dumps({"msg": f"bad request with Api-Key {API_KEY}", "code": "BadParams"}),
    )
    sandbox.add_fault(
        "status",
        endpoint="users/update",
        email=emails[9],
        status=401,
        body=json.dumps({"msg": f"Invalid API key {API_KEY}", "code": "BadApiKey"}),
    )
    run = job.run("--log-level", "DEBUG", CONCURRENCY="1")
    assert run.code == 3, run.stderr  # the 401 on the last customer aborts the run
    rows = run.by_customer()
    assert rows[1]["reason"] == "InvalidEmailAddressError"
    assert rows[2]["status"] == "success" and rows[2]["user_update"]["attempts"] == 3
    assert rows[3]["status"] == "success" and rows[3]["event_track"]["attempts"] == 2
    assert rows[5]["reason"] == "BadParams"
    assert rows[9]["reason"] == "interrupted"  # the run says why: the key was rejected
    assert run.results["run"]["aborted"].startswith("Iterable rejected the API key: HTTP 401")

    log_text = job.log_file.read_text()
    assert "retrying" in log_text  # DEBUG reached the file
    outputs = {"log": log_text, "stderr": run.stderr, "stdout": run.stdout}
    for name, text in outputs.items():
        assert API_KEY not in text, name
        assert password not in text, name
        assert UNMASKED_EMAIL.findall(text) == [], name
    results_text = run.results_path.read_text()
    assert emails[2] in results_text  # the results file is where emails belong
    assert API_KEY not in results_text and password not in results_text


def test_a_wrong_password_is_never_echoed(job):
    wrong = "Wr0ng-" + uuid.uuid4().hex
    run = job.run("--log-level", "DEBUG", MYSQL_PASSWORD=wrong)
    assert_refused(run, 3, "MySQL refused user")
    for text in (run.stderr, run.stdout, job.log_file.read_text(), run.results_path.read_text()):
        assert wrong not in text
