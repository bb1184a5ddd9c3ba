"""No credential is shown: URLs and DSNs masked whatever characters their password holds, query
credentials masked, the tracking URI's login kept out of what MLflow is given, the results store's
URL shown masked by every command, and no credential in the environment a Ray job is given.
(With a real tracking server, MLflow's own "View run" line, stored params and tags, and Ray's
session folder: tests/test_cluster.py.)"""

from __future__ import annotations

import os
from urllib.parse import quote

import mlflow
import pytest

from commands import invoke
from conftest import free_port
from uqflow import cluster, credentials
from uqflow import tracking as tr
from uqflow.credentials import hide, mask, split_login
from uqflow.store.db import redact

#: a password holding every character that ends a part of a URL, and its percent-encoded form
PASSWORD = "p/a#s?s@w:rd-9071"
ENCODED = quote(PASSWORD, safe="")


def leaked(text: str, *secrets: str) -> list[str]:
    """The forms of ``secrets`` (raw, percent-encoded) found in ``text``."""
    forms = {f for s in (secrets or (PASSWORD,)) for f in (s, quote(s, safe=""), quote(s))}
    return sorted(f for f in forms if f in text)


MASKED = [
    ("http://alice:s3cret@mlflow.example:5000", "http://alice:***@mlflow.example:5000"),
    (f"http://alice:{ENCODED}@h:5000/path", "http://alice:***@h:5000/path"),
    ("http://alice:pa@ss:w@h:5000", "http://alice:***@h:5000"),  # a raw '@' and ':' (requests reads it so)
    ("https://tok:x%2Fy@h/path", "https://tok:***@h/path"),
    ("http://alice@h:5000", "http://alice@h:5000"),  # a user alone is no secret
    ("http://:only-a-password@h", "http://:***@h"),
    ("http://h:5000", "http://h:5000"),
    (f"postgresql+psycopg://me:{ENCODED}@db.example:5432/results",
     "postgresql+psycopg://me:***@db.example:5432/results"),
    ("postgresql+psycopg://me:p/a#s?s@db:5432/results", "postgresql+psycopg://me:***@db:5432/results"),  # raw /#?
    ("postgresql://host/db?password=x", "postgresql://host/db?password=***"),
    ("postgresql://me@host/db?sslmode=require&sslpassword=k%26y&application_name=a",
     "postgresql://me@host/db?sslmode=require&sslpassword=***&application_name=a"),
    ("postgresql://host/db?password=a#b&c&sslmode=require", "postgresql://host/db?password=***&sslmode=require"),
    ("http://h?token=abc&api_key=1&X-Amz-Security-Token=q&key=z",
     "http://h?token=***&api_key=***&X-Amz-Security-Token=***&key=***"),
    ("sqlite:///results.db", "sqlite:///results.db"),
    ("sqlite:////tmp/a@b:c/results.db", "sqlite:////tmp/a@b:c/results.db"),  # a path, whatever it holds
    ("sqlite:///results.db?mode=ro&uri=true", "sqlite:///results.db?mode=ro&uri=true"),
    ("/tmp/mlruns", "/tmp/mlruns"),
    ("results.db", "results.db"),
    ("not a url", "not a url"),
    ("http://h/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=uqflow-study",
     "http://h/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=uqflow-study"),
]


@pytest.mark.parametrize("url,shown", MASKED, ids=[u for u, _ in MASKED])
def test_mask_hides_every_password_and_query_credential(url, shown):
    assert mask(url) == shown
    assert redact(url) == shown and tr.shown_uri(url) == shown  # the store's and tracking's display are this one
    assert credentials.holds_secret(url) == (url != shown)


def test_split_login_decodes_as_an_http_client_sends_it():
    assert split_login(f"http://alice:{ENCODED}@h:5000/x") == ("http://h:5000/x", "alice", PASSWORD)
    assert split_login(f"http://al%40ice:{PASSWORD}@h") == ("http://h", "al@ice", PASSWORD)  # raw, as far as it goes
    assert split_login("http://alice@h") == ("http://alice@h", None, None)
    assert split_login("sqlite:///x.db") == ("sqlite:///x.db", None, None)


def test_hide_masks_urls_and_known_secrets_in_free_text(monkeypatch):
    monkeypatch.setenv("UQFLOW_RESULTS_DB", f"postgresql://me:{ENCODED}@h/db")
    monkeypatch.setenv("SOME_API_TOKEN", "tok-123456")
    text = (f"failed on http://u:{ENCODED}@h/api (login {PASSWORD}); "
            f"token tok-123456; postgresql://h/db?password=zz-zz-zz")
    out = hide(text)
    assert leaked(out) == [] and "tok-123456" not in out and "zz-zz-zz" not in out, out
    assert "http://u:***@h/api" in out


def test_the_login_in_the_tracking_uri_travels_in_mlflows_variables(tracking, monkeypatch):
    """Inside :func:`login_out_of_uri` MLflow (and every process started meanwhile) has the URI
    without its login, the login is in MLflow's variables, and the URI is shown as given, masked;
    after it everything is as before."""
    uri = f"http://alice:{ENCODED}@127.0.0.1:9/"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    mlflow.set_tracking_uri(uri)
    with tr.login_out_of_uri():
        assert mlflow.get_tracking_uri() == os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9/"
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == PASSWORD
        assert tr.shown_uri() == "http://alice:***@127.0.0.1:9/"
        assert tr.login_user() == "alice" and tr.login_source() == "uri"
        message = tr._access_message("UNAUTHENTICATED", tr.shown_uri(), "")
        assert "refused the login of user 'alice'" in message and "check the user and password in MLFLOW_TRACKING_URI" in message
    assert mlflow.get_tracking_uri() == uri and os.environ["MLFLOW_TRACKING_USERNAME"] == "bob"
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ


def test_a_wrong_login_from_the_variables_names_the_variables(tracking, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-one")
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    with tr.login_out_of_uri():
        assert tr.login_source() == "env" and tr.login_user() == "bob"
        message = tr._access_message("UNAUTHENTICATED", tr.shown_uri(), "")
    assert "user 'bob'" in message and "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in message


def test_a_query_credential_in_the_tracking_uri_turns_off_mlflows_url_line(tracking, monkeypatch):
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    mlflow.set_tracking_uri("http://127.0.0.1:9/?token=abcdef")
    with tr.login_out_of_uri():
        assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
        assert tr.shown_uri() == "http://127.0.0.1:9/?token=***"
    assert "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT" not in os.environ


@pytest.mark.parametrize("form", ["encoded", "raw"])
def test_a_password_in_the_tracking_uri_is_printed_by_no_command(tracking, tmp_path, monkeypatch, form):
    """Against a tracking server that is not there, every command that reaches it says so in one
    line naming the URI with its password masked (raw: the '@' and ':' a URL parser accepts)."""
    password = PASSWORD if form == "encoded" else "pa@ss:w-rd-9071"
    userinfo = f"alice:{quote(password, safe='')}" if form == "encoded" else f"alice:{password}"
    uri = f"http://{userinfo}@127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nmodels: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mini]\n")
    for args in (["aggregate", "--db", f"sqlite:///{tmp_path / 'r.db'}"], ["grid", str(grid), "--dry-run"],
                 ["rescore", "0123456789abcdef0123456789abcdef"]):
        res = invoke(*args)
        assert res.exit_code == 1 and leaked(res.output, password) == [], (args, res.output)
        assert "alice:***@127.0.0.1:" in res.output and "Traceback" not in res.output, (args, res.output)
    assert mlflow.get_tracking_uri() == uri  # as before the command


@pytest.mark.parametrize("url", [
    f"postgresql+psycopg://me:{ENCODED}@127.0.0.1:{{port}}/none",
    "postgresql+psycopg://me:p/a#s?s-9071@127.0.0.1:{port}/none",  # raw / # ? (SQLAlchemy reads them so)
    "postgresql+psycopg://me:p/a#s?s@w:rd-9071@127.0.0.1:{port}/none",  # a raw '@': no URL SQLAlchemy reads
    "postgresql+psycopg://127.0.0.1:{port}/none?password=p/a%23s%3Fs%40w:rd-9071&sslmode=disable",
], ids=["encoded", "raw", "raw-at", "query"])
def test_a_password_in_the_results_store_url_is_printed_by_no_command(tracking, tmp_path, monkeypatch, url):
    url = url.replace("{port}", str(free_port()))  # nothing listens there
    monkeypatch.setenv("UQFLOW_RESULTS_DB", url)
    secrets = ("p/a#s?s@w:rd-9071", "p/a#s?s-9071", "p/a#s?s")
    for args in (["query", "SELECT 1"], ["aggregate"], ["db", "current"], ["db", "upgrade"], ["report"],
                 ["query", "--db", url, "SELECT 1"]):
        res = invoke(*args)
        assert res.exit_code != 0 and leaked(res.output, *secrets) == [], (args, res.output)
        assert "Traceback" not in res.output and "***" in res.output, (args, res.output)


def test_no_credential_enters_the_environment_of_a_ray_job(tracking, monkeypatch):
    """A Ray job's runtime environment (which Ray writes to its logs) holds no password, whether it
    sits in a variable named as such, in the tracking URI or in the results store's URL; the
    workers get them as an actor's argument, whose repr shows names only."""
    uri = f"http://alice:{ENCODED}@127.0.0.1:9"
    monkeypatch.setenv("UQFLOW_RESULTS_DB", f"postgresql+psycopg://me:{ENCODED}@db/results")
    monkeypatch.setenv("UQFLOW_OTHER_URL", "postgresql://db/x?sslpassword=k-e-y-1")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdef")
    mlflow.set_tracking_uri(uri)
    for moved in (False, True):
        with tr.login_out_of_uri() if moved else _nothing():
            env, secrets = cluster.worker_env(), cluster.worker_secrets()
        text = repr(env) + repr(secrets)
        assert leaked(text) == [] and "k-e-y-1" not in text and "hf_abcdef" not in text, text
        assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9"
        values = secrets._values
        assert values["MLFLOW_TRACKING_PASSWORD"] == PASSWORD  # the user name, no secret, may be in either
        assert {**env, **values}["MLFLOW_TRACKING_USERNAME"] == "alice"
        assert {"UQFLOW_RESULTS_DB", "UQFLOW_OTHER_URL", "HF_TOKEN"} <= set(values)
        assert "UQFLOW_RESULTS_DB" not in env and "MLFLOW_TRACKING_URI" not in values


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def test_an_error_tag_holds_no_credential(tracking, monkeypatch):
    """What a failed run records as its reason is masked as a printed message is."""
    monkeypatch.setenv("UQFLOW_RESULTS_DB", f"postgresql+psycopg://me:{ENCODED}@db/results")
    with tr.tracked_run("r", {}) as run:
        pass
    tr.tag_error(run.info.run_id, f"OperationalError: cannot reach postgresql://me:{ENCODED}@db/results ({PASSWORD})")
    tag = mlflow.get_run(run.info.run_id).data.tags[tr.ERROR_TAG]
    assert leaked(tag) == [] and "postgresql://me:***@db/results" in tag, tag
