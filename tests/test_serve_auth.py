"""CDS Hooks client JWTs (2.0, "Trusting CDS Clients") with real RSA and EC keys, and the dashboard's bearer token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from otrules import OtrulesError
from otrules.serve.auth import (
    AuthError,
    JwksError,
    JwtVerifier,
    bearer_token,
    check_bearer,
    load_jwks,
)

BASE = "https://otrules.example.org"
SERVICE = "/cds-services/otrules"
AUD = BASE + SERVICE
ISS = "https://ehr.example.org/"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def public_jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algo = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk = algo.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", **extra}


@pytest.fixture(scope="module")
def jwks(rsa_key, ec_key) -> dict[str, Any]:
    return {"keys": [public_jwk(rsa_key, "ehr-rsa", alg="RS384"), public_jwk(ec_key, "ehr-ec")]}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(jwks, clock) -> JwtVerifier:
    return JwtVerifier(jwks, {ISS, "https://other-ehr.example.net"}, BASE, clock=clock)


def claims(**over: Any) -> dict[str, Any]:
    out = {"iss": ISS, "aud": AUD, "exp": int(NOW) + 300, "iat": int(NOW), "jti": str(uuid.uuid4()),
           "tenant": "2ddd6c3a-8e9a-44c6-a305-52111ad302a2"}
    out.update(over)
    return {k: v for k, v in out.items() if v is not DROP}


DROP = object()


def sign(key: Any, payload: dict[str, Any], alg: str = "RS384", kid: str | None = "ehr-rsa", **headers: Any) -> str:
    h = {"typ": "JWT", **({"kid": kid} if kid is not None else {}), **headers}
    return jwt.encode(payload, key, algorithm=alg, headers=h)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(verifier: JwtVerifier, token: str, reason: str, audience: str = SERVICE) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify(token, audience)
    assert info.value.reason == reason
    # no part of the token is in the reason: not its segments, not the claims' values, not the kid
    for part in token.split("."):
        if part:
            assert part not in str(info.value)
    for secret in ("ehr-rsa", "ehr-ec", ISS, "2ddd6c3a"):
        assert secret not in str(info.value)
    return info.value


# ---------------------------------------------------------------- accepted


def test_a_good_rs384_token_is_accepted(verifier, rsa_key):
    payload = claims()
    got = verifier.verify(sign(rsa_key, payload), SERVICE)
    assert got == payload


def test_a_good_es384_token_is_accepted(verifier, ec_key):
    payload = claims()
    assert verifier.verify(sign(ec_key, payload, alg="ES384", kid="ehr-ec"), SERVICE)["jti"] == payload["jti"]


def test_aud_may_be_an_array_and_the_audience_an_absolute_url(verifier, rsa_key):
    feedback = AUD + "/feedback"
    assert verifier.verify(sign(rsa_key, claims(aud=[feedback])), SERVICE + "/feedback")
    assert verifier.verify(sign(rsa_key, claims(aud=["https://elsewhere.example", AUD])), AUD)


def test_the_audience_can_come_from_a_function(jwks, clock, rsa_key):
    v = JwtVerifier(jwks, {ISS}, lambda path: "https://proxy.example.org/otrules" + path, clock=clock)
    assert v.verify(sign(rsa_key, claims(aud="https://proxy.example.org/otrules" + SERVICE)), SERVICE)


def test_a_token_within_the_leeway_is_accepted(verifier, rsa_key, clock):
    token = sign(rsa_key, claims(exp=int(NOW) + 300))
    clock.now = NOW + 300 + 29
    assert verifier.verify(token, SERVICE)


# ---------------------------------------------------------------- refused


def test_a_bad_signature_is_refused(verifier, other_rsa_key):
    refused(verifier, sign(other_rsa_key, claims()), "bad signature")  # the right kid, another private key


def test_a_changed_payload_is_refused(verifier, rsa_key):
    header, _, signature = sign(rsa_key, claims()).split(".")
    forged = b64(json.dumps(claims(iss=ISS, aud=AUD, jti="forged")).encode())
    refused(verifier, f"{header}.{forged}.{signature}", "bad signature")


def test_a_wrong_audience_is_refused(verifier, rsa_key):
    refused(verifier, sign(rsa_key, claims(aud="https://otrules.example.org/cds-services/another")),
            "audience does not match the endpoint")
    # a token for the service is not one for its feedback endpoint
    refused(verifier, sign(rsa_key, claims()), "audience does not match the endpoint", SERVICE + "/feedback")
    refused(verifier, sign(rsa_key, claims(aud="https://evil.example" + SERVICE)), "audience does not match the endpoint")


def test_a_wrong_issuer_is_refused(verifier, rsa_key):
    refused(verifier, sign(rsa_key, claims(iss="https://ehr.example.org.evil/")), "issuer not allowed")


def test_an_expired_token_is_refused(verifier, rsa_key, clock):
    token = sign(rsa_key, claims(exp=int(NOW) + 300))
    clock.now = NOW + 300 + 31
    refused(verifier, token, "token expired")


def test_a_replayed_jti_is_refused(verifier, rsa_key, ec_key):
    payload = claims(jti="one-time-only-17")
    verifier.verify(sign(rsa_key, payload), SERVICE)
    refused(verifier, sign(rsa_key, payload), "replayed jti")
    # signed again, with another key and another iat: still the same jti from the same issuer
    refused(verifier, sign(ec_key, claims(jti="one-time-only-17", iat=int(NOW) - 5), alg="ES384", kid="ehr-ec"),
            "replayed jti")
    # another issuer's jti space is its own
    assert verifier.verify(sign(rsa_key, claims(jti="one-time-only-17", iss="https://other-ehr.example.net")), SERVICE)


def test_a_refused_token_does_not_use_up_its_jti(verifier, rsa_key):
    refused(verifier, sign(rsa_key, claims(jti="j-1", aud="https://wrong.example")), "audience does not match the endpoint")
    assert verifier.verify(sign(rsa_key, claims(jti="j-1")), SERVICE)


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "iss", "aud"])
def test_a_missing_claim_is_refused(verifier, rsa_key, claim):
    refused(verifier, sign(rsa_key, claims(**{claim: DROP})), f"missing claim: {claim}")


@pytest.mark.parametrize(("over", "reason"), [
    ({"jti": ""}, "claim jti must be a string of 1 to 256 characters"),
    ({"jti": 17}, "claim jti must be a string of 1 to 256 characters"),
    ({"exp": "soon"}, "claim exp must be a number of seconds"),
    ({"iat": True}, "claim iat must be a number of seconds"),
    ({"aud": [AUD, 1]}, "claim aud must be a string or an array of strings"),
    ({"iat": int(NOW) + 120}, "token issued in the future"),
    ({"nbf": int(NOW) + 120}, "token not yet valid"),
    ({"exp": int(NOW) + 7200}, "token expires more than 3600 seconds ahead"),
])
def test_bad_claims_are_refused(verifier, rsa_key, over, reason):
    refused(verifier, sign(rsa_key, claims(**over)), reason)


def test_alg_none_is_refused(verifier):
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "ehr-rsa"}).encode())
    payload = b64(json.dumps(claims()).encode())
    refused(verifier, f"{header}.{payload}.", "algorithm not allowed")


def test_hmac_signed_with_the_public_key_is_refused(verifier, rsa_key):
    """The classic confusion: HS256 keyed with the RSA public key that the verifier holds."""
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "ehr-rsa"}).encode())
    payload = b64(json.dumps(claims()).encode())
    mac = b64(hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    refused(verifier, f"{header}.{payload}.{mac}", "algorithm not allowed")


def test_an_unknown_kid_is_refused(verifier, rsa_key):
    refused(verifier, sign(rsa_key, claims(), kid="ehr-rsa-2"), "unknown key id")


def test_a_token_without_kid_or_typ_is_refused(verifier, rsa_key):
    refused(verifier, sign(rsa_key, claims(), kid=None), "token header has no kid")
    header = b64(json.dumps({"alg": "RS384", "typ": "JOSE+JSON", "kid": "ehr-rsa"}).encode())
    refused(verifier, f"{header}.{b64(b'{}')}.c2ln", "token header typ must be JWT")


def test_rs256_is_refused_unless_allowed(jwks, clock, rsa_key):
    strict = JwtVerifier({"keys": [public_jwk(rsa_key, "k")]}, {ISS}, BASE, clock=clock)
    refused(strict, sign(rsa_key, claims(), alg="RS256", kid="k"), "algorithm not allowed")
    wide = JwtVerifier({"keys": [public_jwk(rsa_key, "k")]}, {ISS}, BASE, clock=clock,
                       algorithms=["RS384", "ES384", "RS256", "ES256"])
    assert wide.verify(sign(rsa_key, claims(), alg="RS256", kid="k"), SERVICE)


def test_an_algorithm_that_does_not_fit_the_key_is_refused(verifier, rsa_key, ec_key):
    # the RSA key's JWK says RS384: a PS384 token under its kid is refused even if PS384 were allowed
    wide = JwtVerifier({"keys": [public_jwk(rsa_key, "ehr-rsa", alg="RS384")]}, {ISS}, BASE,
                       algorithms=["RS384", "PS384", "ES384"], clock=lambda: NOW)
    refused(wide, sign(rsa_key, claims(), alg="PS384"), "algorithm does not fit the key")
    # an RSA-signed token that names the EC key
    refused(verifier, sign(rsa_key, claims(), kid="ehr-ec"), "algorithm does not fit the key")


def test_a_jku_outside_the_allow_list_is_refused(jwks, clock, rsa_key):
    v = JwtVerifier(jwks, {ISS}, BASE, clock=clock, jkus={"https://ehr.example.org/jwks"})
    refused(v, sign(rsa_key, claims(), jku="https://attacker.example/jwks"), "jku not allowed")
    assert v.verify(sign(rsa_key, claims(), jku="https://ehr.example.org/jwks"), SERVICE)
    assert v.verify(sign(rsa_key, claims()), SERVICE)  # jku is optional


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 9000, "e30.e30.e30"])
def test_a_malformed_token_is_refused(verifier, token):
    with pytest.raises(AuthError):
        verifier.verify(token, SERVICE)


def test_auth_error_is_an_otrules_error():
    assert issubclass(AuthError, OtrulesError) and issubclass(JwksError, ValueError)


# ---------------------------------------------------------------- replay memory is bounded


def test_jtis_are_forgotten_once_their_tokens_have_expired(verifier, rsa_key, clock):
    for _ in range(5):
        verifier.verify(sign(rsa_key, claims(exp=int(NOW) + 60)), SERVICE)
    assert verifier.remembered() == 5
    clock.now = NOW + 60 + 31
    verifier.verify(sign(rsa_key, claims(iat=int(clock.now), exp=int(clock.now) + 60)), SERVICE)
    assert verifier.remembered() == 1


def test_a_full_replay_memory_refuses_rather_than_forgets(jwks, clock, rsa_key):
    v = JwtVerifier(jwks, {ISS}, BASE, clock=clock, max_jtis=3)
    for _ in range(3):
        v.verify(sign(rsa_key, claims()), SERVICE)
    refused(v, sign(rsa_key, claims()), "too many unexpired tokens to remember; try again later")
    clock.now = NOW + 300 + 31
    assert v.verify(sign(rsa_key, claims(iat=int(clock.now), exp=int(clock.now) + 300)), SERVICE)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("algorithms", [["HS256"], ["none"], ["RS384", "HS384"], []])
def test_hmac_and_none_cannot_be_allowed(jwks, algorithms):
    with pytest.raises(ValueError, match="CDS Hooks forbids none and HMAC"):
        JwtVerifier(jwks, {ISS}, BASE, algorithms=algorithms)


def test_bad_jwks_are_refused(rsa_key, ec_key):
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private = RSAAlgorithm.to_jwk(rsa_key, as_dict=True)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"keys": [public_jwk(rsa_key, "a"), public_jwk(ec_key, "a")]}, "kid is used by an earlier key"),
        ({"keys": [{**private, "kid": "p"}]}, "private or symmetric key material"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}, "private or symmetric key material"),
        ({"keys": [{k: v for k, v in public_jwk(rsa_key, "x").items() if k != "kid"}]}, "has no kid"),
        ({"keys": [public_jwk(small, "small")]}, "at least 2048 bits"),
        ({"keys": [{"kty": "RSA", "kid": "broken", "n": "AQAB", "e": "!!"}]}, "not a valid RSA public key"),
        ({"keys": {}}, "array `keys`"),
    ]
    for doc, reason in cases:
        with pytest.raises(JwksError) as info:
            JwtVerifier(doc, {ISS}, BASE)
        assert reason in str(info.value), (reason, str(info.value))


def test_keys_can_be_rotated(verifier, rsa_key, other_rsa_key):
    verifier.set_keys({"keys": [public_jwk(other_rsa_key, "ehr-rsa-2026")]})
    assert verifier.verify(sign(other_rsa_key, claims(), kid="ehr-rsa-2026"), SERVICE)
    refused(verifier, sign(rsa_key, claims()), "unknown key id")


def test_load_jwks_reads_a_file(tmp_path, jwks):
    path = tmp_path / "ehr.jwks.json"
    path.write_text(json.dumps(jwks))
    assert load_jwks(path) == jwks
    assert load_jwks(str(path)) == jwks
    (tmp_path / "bad.json").write_text("{\"keys\": 1}")
    with pytest.raises(JwksError, match="array `keys`"):
        load_jwks(tmp_path / "bad.json")
    with pytest.raises(JwksError, match="cannot read"):
        load_jwks(tmp_path / "missing.json")
    with pytest.raises(JwksError, match="must be https"):
        load_jwks("http://ehr.example.org/jwks")


# ---------------------------------------------------------------- the dashboard's bearer token


@pytest.mark.parametrize(("header", "ok"), [
    ("Bearer s3cret-token", True),
    ("bearer s3cret-token", True),
    ("Bearer  s3cret-token ", True),
    ("Bearer s3cret-tokem", False),
    ("Bearer s3cret-token2", False),
    ("Bearer ", False),
    ("Basic s3cret-token", False),
    ("s3cret-token", False),
    ("Bearer sécret", False),
    (None, False),
])
def test_check_bearer(header, ok):
    assert check_bearer(header, "s3cret-token") is ok


def test_an_empty_configured_token_lets_no_one_in():
    assert check_bearer("Bearer ", "") is False
    assert check_bearer("Bearer x", "") is False


def test_bearer_token_extracts_the_jwt():
    assert bearer_token("Bearer a.b.c") == "a.b.c"
    with pytest.raises(AuthError, match="no Authorization header"):
        bearer_token(None)
    with pytest.raises(AuthError, match="not a Bearer token"):
        bearer_token("Basic dXNlcjpwYXNz")
