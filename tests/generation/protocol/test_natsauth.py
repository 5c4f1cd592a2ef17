"""NatsAuth: the NATS credentials and TLS settings of the bot and of a worker, checked together and turned into the
keywords of `nats.connect`; secrets never in repr or in a message."""

from __future__ import annotations

import ssl

import pytest
import trustme

from generation.protocol.natsauth import NatsAuth, NatsAuthError, inbox_prefix, safe_url


@pytest.fixture
def files(tmp_path):
    ca = trustme.CA()
    client = ca.issue_cert("worker-1")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem",
             "creds": tmp_path / "user.creds", "seed": tmp_path / "seed.nk"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    client.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    client.private_key_pem.write_to_path(str(paths["key"]))
    paths["creds"].write_text("creds")
    paths["seed"].write_text("SU...")
    return paths


def test_no_settings_means_a_plain_connection():
    auth = NatsAuth()
    assert not auth and auth.connect_kwargs("nats://127.0.0.1:4222") == {}
    assert auth.describe() == "no credentials"


def test_user_and_password_reach_connect_with_their_own_inbox():
    kw = NatsAuth(user="bot", password="hunter2").connect_kwargs("nats://h:4222")
    assert kw == {"user": "bot", "password": "hunter2", "inbox_prefix": "_INBOX.bot"}
    assert inbox_prefix("worker-1") == "_INBOX.worker-1" and inbox_prefix(None) == "_INBOX"


def test_token_creds_and_seed_reach_connect(files):
    assert NatsAuth(token="t0k").connect_kwargs("nats://h:1") == {"token": "t0k"}
    assert NatsAuth(creds=files["creds"]).connect_kwargs("nats://h:1") == {"user_credentials": str(files["creds"])}
    assert NatsAuth(nkey_seed=str(files["seed"])).connect_kwargs("nats://h:1") == {"nkeys_seed": str(files["seed"])}


def test_tls_builds_a_context_from_the_files_and_starts_tls_first(files):
    auth = NatsAuth(user="w", password="p", tls_ca=files["ca"], tls_cert=files["cert"], tls_key=files["key"])
    kw = auth.connect_kwargs("tls://127.0.0.1:4222")
    ctx = kw["tls"]
    assert isinstance(ctx, ssl.SSLContext) and kw["tls_handshake_first"] is True
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    # Only the given CA is trusted (the system's are not loaded).
    assert len(ctx.get_ca_certs()) == 1


def test_secrets_never_show(files):
    auth = NatsAuth(user="bot", password="hunter2", tls_ca=files["ca"])
    text = repr(auth) + str(auth) + auth.describe() + auth.login_settings() + auth.tls_settings()
    assert "hunter2" not in text and "NATS_PASSWORD" in auth.describe()
    assert "t0psecret" not in repr(NatsAuth(token="t0psecret")) + NatsAuth(token="t0psecret").describe()
    assert safe_url("nats://bot:hunter2@h:4222") == "nats://***@h:4222"


@pytest.mark.parametrize(
    ("kwargs", "url", "message"),
    [
        ({"user": "bot"}, None, "NATS_USER is set without NATS_PASSWORD"),
        ({"password": "hunter2"}, None, "NATS_PASSWORD is set without NATS_USER"),
        ({"user": "bot", "password": "hunter2", "token": "hunter2"}, None,
         "NATS_USER/NATS_PASSWORD and NATS_TOKEN are all set; set one way of logging in to NATS"),
        ({"user": "a b", "password": "hunter2"}, None, "NATS_USER 'a b' has to be 1-64 letters, digits"),
        ({"creds": "missing.creds"}, None, "NATS_CREDS names 'missing.creds', which is not a file"),
        ({"tls_cert": "cert"}, None, "NATS_TLS_CERT is set without NATS_TLS_KEY"),
        ({"tls_key": "key"}, None, "NATS_TLS_KEY is set without NATS_TLS_CERT"),
        ({"tls_ca": "ca"}, "nats://h:4222", "NATS_URL 'nats://h:4222' starts with nats:// but NATS_TLS_* is set"),
        ({}, "tls://h:4222", "NATS_URL 'tls://h:4222' is a tls:// URL but NATS_TLS_CA is not set"),
        ({"user": "bot", "password": "hunter2"}, "nats://x:hunter2@h:4222",
         "NATS_URL 'nats://***@h:4222' holds credentials, and NATS_USER and NATS_PASSWORD give some too"),
    ],
)
def test_settings_that_do_not_fit_are_named(files, kwargs, url, message):
    for key in ("tls_ca", "tls_cert", "tls_key"):
        if kwargs.get(key) in ("ca", "cert", "key"):
            kwargs = {**kwargs, key: files[kwargs[key]]}
    with pytest.raises(NatsAuthError) as e:
        NatsAuth(**kwargs).check(url)
    assert message in str(e.value) and "hunter2" not in str(e.value)


def test_a_certificate_that_does_not_load_is_named(files, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    auth = NatsAuth(tls_ca=files["ca"], tls_cert=bad, tls_key=files["key"])
    with pytest.raises(NatsAuthError, match="NATS_TLS_CERT .*bad.pem.* could not be loaded"):
        auth.connect_kwargs("tls://h:4222")


def test_from_env_reads_the_variables_and_empty_counts_as_unset(files):
    env = {"NATS_USER": "gpu1", "NATS_PASSWORD": "pw", "NATS_TOKEN": "", "NATS_TLS_CA": str(files["ca"])}
    auth = NatsAuth.from_env(env)
    assert (auth.user, auth.password, auth.token, auth.tls_ca) == ("gpu1", "pw", None, files["ca"])
    assert auth.methods == ("user",) and auth.tls
