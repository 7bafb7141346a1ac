"""Authentication through HTTP: OIDC against a real JWKS on loopback, Basic, both at once."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from app import auth, queue
from app.main import create_app
from app.settings import Settings
from app.store.sqlite import SqliteStore
from tests import idp as idp_module
from tests.conftest import free_port, make_settings
from tests.idp import AUDIENCE, IdentityProvider, hmac_token, unsigned_token

TASKS = "/ga4gh/tes/v1/tasks"
BODY = {"executors": [{"image": "alpine", "command": ["true"]}]}
PASSWORDS = {"alice": "wonderland-42", "bob": "builder:with:colons", "root": "t0p-s3cret"}


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def htpasswd_line(name: str, password: str, flags: str = "") -> str:
    """A line as `htpasswd -B` writes it ($2y$), with optional flags."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    line = f"{name}:{hashed.replace('$2b$', '$2y$', 1)}"
    return f"{line}:{flags}" if flags else line


def users_file(tmp_path: Path) -> Path:
    """alice and bob, and root with the admin flag."""
    path = tmp_path / "htpasswd"
    lines = [
        "# written by htpasswd -B",
        htpasswd_line("alice", PASSWORDS["alice"], "group:team-a"),
        htpasswd_line("bob", PASSWORDS["bob"]),
        htpasswd_line("root", PASSWORDS["root"], "admin"),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def basic(name: str, password: str | None = None) -> dict[str, str]:
    """An Authorization header for Basic."""
    raw = f"{name}:{PASSWORDS[name] if password is None else password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def bearer(token: str) -> dict[str, str]:
    """An Authorization header for Bearer."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def provider() -> Iterator[IdentityProvider]:
    """A real discovery document and JWKS on 127.0.0.1 with one RSA key, k1."""
    with IdentityProvider() as server:
        server.add_key("k1")
        yield server


@pytest.fixture
def clock() -> Clock:
    """The authenticator's clock."""
    return Clock()


Client = Callable[..., Any]


@pytest.fixture
def serve(tmp_path: Path, clock: Clock) -> Iterator[Client]:
    """Open the app with settings overrides; returns a context manager yielding a TestClient."""

    @contextmanager
    def open_client(**overrides: Any) -> Iterator[TestClient]:
        settings = make_settings(tmp_path, **overrides)
        store = SqliteStore(tmp_path / f"tasks-{time.monotonic_ns()}.db")
        authenticator = auth.Authenticator(settings, clock=clock)
        app = create_app(
            settings, store, queue.TaskQueue(settings, queue.connect(settings)), authenticator
        )
        try:
            with TestClient(app) as client:
                yield client
        finally:
            store.close()

    yield open_client


def oidc_settings(provider: IdentityProvider, **extra: Any) -> dict[str, Any]:
    """Settings of OIDC mode against ``provider``."""
    return {"auth": "oidc", "oidc_issuer": provider.issuer, "oidc_audience": [AUDIENCE]} | extra


def unauthorized(response: Any, *schemes: str) -> dict[str, Any]:
    """Assert a problem+json 401 that challenges exactly ``schemes``; return the body."""
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    challenges = response.headers.get_list("www-authenticate")
    assert [c.split(" ")[0] for c in challenges] == list(schemes), challenges
    assert all('realm="kueue-tes"' in c for c in challenges)
    body = dict(response.json())
    assert body["status"] == 401 and body["title"] == "Unauthorized" and body["detail"]
    return body


# -- service-info and auth none ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/ga4gh/tes/v1/service-info", "/v1/service-info", "/v1/tasks/service-info"]
)
def test_service_info_is_public(serve: Client, provider: IdentityProvider, path: str) -> None:
    """service-info answers without credentials, and says nothing of an open server."""
    with serve(**oidc_settings(provider)) as client:
        response = client.get(path)
        assert response.status_code == 200, response.text
        assert "Authentication is off" not in response.json()["description"]
        unauthorized(client.get(TASKS), "Bearer")


def test_auth_none_is_open_and_says_so(serve: Client, caplog: pytest.LogCaptureFixture) -> None:
    """With auth none: a warning at start, service-info says so, and everyone is one admin."""
    with caplog.at_level(logging.WARNING, logger="app.main"), serve() as client:
        assert any("Authentication is off" in r.getMessage() for r in caplog.records)
        description = client.get("/ga4gh/tes/v1/service-info").json()["description"]
        assert description.startswith("GA4GH TES 1.1 on Kubernetes")
        assert "Authentication is off" in description and "anyone" in description
        # Credentials are ignored, whatever they are.
        task_id = client.post(TASKS, json=BODY, headers=bearer("junk")).json()["id"]
        assert client.get(f"{TASKS}/{task_id}").status_code == 200


# -- OIDC -----------------------------------------------------------------------------------


def test_valid_token_works_for_every_operation(serve: Client, provider: IdentityProvider) -> None:
    """A valid RS256 token creates, gets, lists and cancels."""
    with serve(**oidc_settings(provider)) as client:
        headers = bearer(provider.token("alice"))
        task_id = client.post(TASKS, json=BODY, headers=headers).json()["id"]
        assert client.get(f"{TASKS}/{task_id}", headers=headers).json()["state"] == "QUEUED"
        assert client.get(TASKS, headers=headers).json()["tasks"][0]["id"] == task_id
        assert client.post(f"{TASKS}/{task_id}:cancel", headers=headers).status_code == 200
        assert client.get(f"/v1/tasks/{task_id}", headers=headers).json()["state"] == "CANCELING"


def test_ec_keys_verify_too(serve: Client, provider: IdentityProvider) -> None:
    """An ES256 token of a published P-256 key is accepted."""
    provider.add_key("ec1", kind="EC")
    with serve(**oidc_settings(provider)) as client:
        response = client.get(TASKS, headers=bearer(provider.token("alice", kid="ec1")))
        assert response.status_code == 200, response.text


def test_missing_and_malformed_credentials(serve: Client, provider: IdentityProvider) -> None:
    """No header, another scheme, an empty or non-JWT token: 401 with a Bearer challenge."""
    with serve(**oidc_settings(provider)) as client:
        body = unauthorized(client.get(TASKS), "Bearer")
        assert "Bearer" in body["detail"]
        assert "error=" not in client.get(TASKS).headers["www-authenticate"]
        unauthorized(client.get(TASKS, headers=basic("alice")), "Bearer")
        unauthorized(client.get(TASKS, headers={"Authorization": "Bearer "}), "Bearer")
        response = client.get(TASKS, headers=bearer("not.a.jwt"))
        unauthorized(response, "Bearer")
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": -40}, "expired"),
        ({"iss": "https://evil.example/realms/tes"}, "another issuer"),
        ({"aud": "some-other-client"}, "not meant for this service"),
        ({"aud": None}, "no 'aud' claim"),
        ({"exp": None}, "no 'exp' claim"),
        ({"iss": None}, "no 'iss' claim"),
        ({"sub": None}, "no 'sub' claim"),
        ({"nbf": 120}, "not valid yet"),
    ],
)
def test_bad_claims_are_401(
    serve: Client, provider: IdentityProvider, claims: dict[str, Any], reason: str
) -> None:
    """Expired, wrong issuer, wrong audience, missing claims, not yet valid: 401 saying why."""
    now = int(time.time())
    for key in ("exp", "nbf"):
        if isinstance(claims.get(key), int):
            claims = dict(claims, **{key: now + claims[key]})
    with serve(**oidc_settings(provider)) as client:
        response = client.get(TASKS, headers=bearer(provider.token(**{"sub": "alice", **claims})))
        body = unauthorized(response, "Bearer")
        assert reason in body["detail"], body
        assert reason in response.headers["www-authenticate"]


def test_leeway_and_cached_tokens_still_expire(
    serve: Client, provider: IdentityProvider, clock: Clock
) -> None:
    """Within the leeway a just-expired token passes; a remembered token ends at its exp."""
    with serve(**oidc_settings(provider, oidc_leeway_seconds=30)) as client:
        late = bearer(provider.token("alice", exp=int(clock.now) - 10))
        assert client.get(TASKS, headers=late).status_code == 200
        headers = bearer(provider.token("alice", exp=int(clock.now) + 5))
        assert client.get(TASKS, headers=headers).status_code == 200
        clock.advance(5 + 30 + 1)
        assert "expired" in unauthorized(client.get(TASKS, headers=headers), "Bearer")["detail"]


def test_unknown_kid_refreshes_keys_then_accepts_the_rotated_key(
    serve: Client, provider: IdentityProvider, clock: Clock
) -> None:
    """Rotation: an unknown kid fetches the JWKS again (at most once per refresh interval)."""
    jwks = idp_module.JWKS_PATH
    with serve(**oidc_settings(provider, oidc_jwks_refresh_seconds=60)) as client:
        assert client.get(TASKS, headers=bearer(provider.token(kid="k1"))).status_code == 200
        assert provider.hits[jwks] == 1
        provider.add_key("k2", publish=False)
        provider.published = ["k2"]  # the issuer rotates: k2 in, k1 out
        new = bearer(provider.token(kid="k2"))
        # Just fetched: the refresh is rate-limited, so the new key is not known yet.
        assert (
            "does not publish" in unauthorized(client.get(TASKS, headers=new), "Bearer")["detail"]
        )
        assert provider.hits[jwks] == 1
        clock.advance(61)
        assert client.get(TASKS, headers=new).status_code == 200
        assert provider.hits[jwks] == 2
        # Tokens of a kid nobody publishes cause one fetch per interval, however many come.
        clock.advance(61)
        provider.add_key("rogue", publish=False)
        for _ in range(5):
            unauthorized(client.get(TASKS, headers=bearer(provider.token(kid="rogue"))), "Bearer")
        assert provider.hits[jwks] == 3
        # The withdrawn key no longer works (its cached tokens have ended by now).
        unauthorized(client.get(TASKS, headers=bearer(provider.token(kid="k1"))), "Bearer")


def test_keys_are_fetched_again_when_old(
    serve: Client, provider: IdentityProvider, clock: Clock
) -> None:
    """After the max age the keys are fetched again, so a withdrawn key stops working."""
    settings = oidc_settings(provider, oidc_jwks_max_age_seconds=600, auth_cache_seconds=0)
    with serve(**settings) as client:
        headers = bearer(provider.token(kid="k1"))
        assert client.get(TASKS, headers=headers).status_code == 200
        provider.add_key("k2")
        provider.published = ["k2"]
        clock.advance(601)
        unauthorized(client.get(TASKS, headers=headers), "Bearer")
        assert client.get(TASKS, headers=bearer(provider.token(kid="k2"))).status_code == 200


def test_alg_none_and_hmac_with_the_public_key_are_rejected(
    serve: Client, provider: IdentityProvider
) -> None:
    """Unsigned tokens and HS256 keyed with the issuer's public key never pass."""
    claims = provider.claims("mallory")
    forged = [
        unsigned_token(claims, "k1"),
        hmac_token(claims, "k1", provider.public_pem("k1")),
        hmac_token(claims, "k1", b"k1"),
    ]
    with serve(**oidc_settings(provider)) as client:
        for token in forged:
            response = client.get(TASKS, headers=bearer(token))
            assert "only RSA, EC and EdDSA" in unauthorized(response, "Bearer")["detail"]


def test_signature_of_another_key_fails(serve: Client, provider: IdentityProvider) -> None:
    """A token signed by an unpublished key but naming a published kid does not verify."""
    impostor = provider.add_key("impostor", publish=False)
    forged = jwt.encode(provider.claims(), impostor, algorithm="RS256", headers={"kid": "k1"})
    with serve(**oidc_settings(provider)) as client:
        body = unauthorized(client.get(TASKS, headers=bearer(forged)), "Bearer")
        assert "signature" in body["detail"]


def test_principal_and_groups_claims_and_admin_groups(
    serve: Client, provider: IdentityProvider
) -> None:
    """The principal and groups come from configurable (nested) claims; a group makes admins."""
    settings = oidc_settings(
        provider,
        oidc_principal_claim="preferred_username",
        oidc_groups_claim="realm_access.roles",
        admins=["group:tes-admins"],
    )
    with serve(**settings) as client:
        alice = bearer(provider.token("uuid-1", preferred_username="alice"))
        bob = bearer(provider.token("uuid-2", preferred_username="bob"))
        admin = bearer(
            provider.token(
                "uuid-3", preferred_username="ada", realm_access={"roles": ["tes-admins"]}
            )
        )
        task_id = client.post(TASKS, json=BODY, headers=alice).json()["id"]
        assert client.get(f"{TASKS}/{task_id}", headers=bob).status_code == 404
        assert client.get(f"{TASKS}/{task_id}", headers=admin).status_code == 200
        nameless = bearer(provider.token("uuid-4"))
        assert (
            "preferred_username"
            in unauthorized(client.get(TASKS, headers=nameless), "Bearer")["detail"]
        )


def test_unreachable_issuer_is_503(serve: Client, clock: Clock) -> None:
    """With no keys fetched yet, a token cannot be checked: 503, not 401."""
    issuer = f"http://127.0.0.1:{free_port()}/realms/tes"
    settings = {"auth": "oidc", "oidc_issuer": issuer, "oidc_audience": [AUDIENCE]}
    with IdentityProvider() as other, serve(**settings) as client:
        other.add_key("k1")
        response = client.get(TASKS, headers=bearer(other.token()))
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        assert "retry" in response.json()["detail"]


def test_no_network_once_keys_are_cached(serve: Client, provider: IdentityProvider) -> None:
    """With the identity provider gone, new and known tokens are still checked locally."""
    with serve(**oidc_settings(provider)) as client:
        known = bearer(provider.token("alice"))
        assert client.get(TASKS, headers=known).status_code == 200
        provider.close()
        assert client.get(TASKS, headers=known).status_code == 200
        assert client.get(TASKS, headers=bearer(provider.token("bob"))).status_code == 200
        unauthorized(client.get(TASKS, headers=bearer(provider.token(aud="x"))), "Bearer")


# -- Basic ----------------------------------------------------------------------------------


def test_basic_right_and_wrong_passwords(serve: Client, tmp_path: Path) -> None:
    """$2y$ bcrypt users: the right password passes, a wrong one or an unknown user is 401."""
    with serve(auth="basic", basic_users_file=users_file(tmp_path)) as client:
        for name in PASSWORDS:
            assert client.get(TASKS, headers=basic(name)).status_code == 200, name
        body = unauthorized(client.get(TASKS, headers=basic("alice", "wrong")), "Basic")
        assert body["detail"] == "the user name or password is wrong"
        # A right password once remembered does not make a wrong one pass.
        unauthorized(client.get(TASKS, headers=basic("alice", "wonderland-4")), "Basic")
        unauthorized(client.get(TASKS, headers=basic("nobody", "wonderland-42")), "Basic")
        unauthorized(client.get(TASKS, headers={"Authorization": "Basic !!!"}), "Basic")
        unauthorized(client.get(TASKS), "Basic")
        assert 'charset="UTF-8"' in client.get(TASKS).headers["www-authenticate"]


def test_basic_users_file_is_reread_when_it_changes(
    serve: Client, tmp_path: Path, clock: Clock
) -> None:
    """A changed file (an updated Secret) takes effect, and forgets remembered passwords."""
    path = users_file(tmp_path)
    with serve(auth="basic", basic_users_file=path) as client:
        assert client.get(TASKS, headers=basic("alice")).status_code == 200
        path.write_text(htpasswd_line("alice", "new-password") + "\n")
        clock.advance(6)
        unauthorized(client.get(TASKS, headers=basic("alice")), "Basic")
        assert client.get(TASKS, headers=basic("alice", "new-password")).status_code == 200
        unauthorized(client.get(TASKS, headers=basic("bob")), "Basic")


def test_both_schemes_at_once(serve: Client, provider: IdentityProvider, tmp_path: Path) -> None:
    """basic,oidc: either scheme works; a 401 challenges both; both name the same owners."""
    settings = oidc_settings(provider, auth="basic,oidc", basic_users_file=users_file(tmp_path))
    with serve(**settings) as client:
        task_id = client.post(TASKS, json=BODY, headers=basic("alice")).json()["id"]
        token = bearer(provider.token("alice"))
        assert client.get(f"{TASKS}/{task_id}", headers=token).status_code == 200
        assert client.get(f"{TASKS}/{task_id}", headers=basic("bob")).status_code == 404
        unauthorized(client.get(TASKS), "Bearer", "Basic")
        response = client.get(TASKS, headers=bearer(provider.token(aud="x")))
        unauthorized(response, "Bearer", "Basic")
        assert 'error="invalid_token"' in response.headers.get_list("www-authenticate")[0]
        unauthorized(client.get(TASKS, headers=basic("bob", "nope")), "Bearer", "Basic")


def test_no_token_or_password_is_logged(
    serve: Client, provider: IdentityProvider, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Good and bad credentials alike leave no secret in any log record."""
    settings = oidc_settings(provider, auth="basic,oidc", basic_users_file=users_file(tmp_path))
    good, expired = provider.token("alice"), provider.token("alice", exp=1)
    secrets = [good, expired, PASSWORDS["alice"], "wrong-password-xyz"]
    with caplog.at_level(logging.DEBUG), serve(**settings) as client:
        client.post(TASKS, json=BODY, headers=bearer(good))
        client.get(TASKS, headers=bearer(expired))
        client.get(TASKS, headers=basic("alice"))
        client.get(TASKS, headers=basic("alice", "wrong-password-xyz"))
    assert any("401" in r.getMessage() for r in caplog.records)
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets:
        assert secret not in text
        assert base64.b64encode(f"alice:{secret}".encode()).decode() not in text


# -- settings that cannot work -------------------------------------------------------------


def test_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    """Missing issuer, audience or users file, a non-bcrypt hash, an unknown mode: errors."""
    with pytest.raises(ValueError, match="KUEUE_TES_OIDC_AUDIENCE"):
        auth.Authenticator(make_settings(tmp_path, auth="oidc", oidc_issuer="https://idp"))
    with pytest.raises(ValueError, match="KUEUE_TES_OIDC_ISSUER"):
        auth.Authenticator(make_settings(tmp_path, auth="oidc", oidc_audience=["x"]))
    with pytest.raises(ValueError, match="KUEUE_TES_BASIC_USERS_FILE"):
        auth.Authenticator(make_settings(tmp_path, auth="basic"))
    md5 = tmp_path / "md5"
    md5.write_text("alice:$apr1$abcdefgh$0123456789abcdefghijkl\n")
    with pytest.raises(ValueError, match=r"md5:1: user 'alice' has no bcrypt hash"):
        auth.Authenticator(make_settings(tmp_path, auth="basic", basic_users_file=md5))
    flagged = tmp_path / "flagged"
    flagged.write_text(htpasswd_line("alice", "x", "admn") + "\n")
    with pytest.raises(ValueError, match="unknown flag 'admn'"):
        auth.Authenticator(make_settings(tmp_path, auth="basic", basic_users_file=flagged))
    with pytest.raises(ValidationError, match="not none, basic, oidc"):
        make_settings(tmp_path, auth="kerberos")
    with pytest.raises(ValidationError):
        make_settings(tmp_path, auth="none,basic")
    assert make_settings(tmp_path, auth="OIDC, basic").auth == "basic,oidc"


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented variables set the security fields (lists comma-separated)."""
    env = {
        "KUEUE_TES_AUTH": "oidc,basic",
        "KUEUE_TES_OIDC_ISSUER": "https://keycloak.example/realms/tes",
        "KUEUE_TES_OIDC_AUDIENCE": "kueue-tes,account",
        "KUEUE_TES_OIDC_PRINCIPAL_CLAIM": "preferred_username",
        "KUEUE_TES_OIDC_GROUPS_CLAIM": "",
        "KUEUE_TES_BASIC_USERS_FILE": "/etc/kueue-tes/htpasswd",
        "KUEUE_TES_ADMINS": "root, group:tes-admins",
        "KUEUE_TES_ROUTES_FILE": "/etc/kueue-tes/routes.yaml",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.auth == "basic,oidc"
    assert settings.oidc_audience == ["kueue-tes", "account"]
    assert settings.oidc_principal_claim == "preferred_username"
    assert settings.oidc_groups_claim is None
    assert settings.admins == ["root", "group:tes-admins"]
    assert settings.basic_users_file == Path("/etc/kueue-tes/htpasswd")
    assert settings.routes_file == Path("/etc/kueue-tes/routes.yaml")
    assert Settings.model_fields["oidc_principal_claim"].default == "sub"
