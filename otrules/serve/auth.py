"""Who may call `otrules serve`: CDS Hooks client JWTs and the dashboard's bearer token.

CDS Hooks 2.0 ("Trusting CDS Clients"): every call carries `Authorization:
Bearer <JWT>`, signed with the client's private key; the service verifies it
against the client's public keys (a JWK Set agreed out of band). `JwtVerifier`
checks, in this order, and refuses with an `AuthError` whose reason holds no
part of the token:

- the header: `alg` in the allow-list (never `none`, never HMAC: the
  specification forbids both), `typ` JWT, a `kid` that names a configured key
  whose type (and curve) fits `alg`, and `jku`, when an allow-list of JWKS URLs
  is configured, in it (keys are never fetched from a token's `jku`);
- the signature, with PyJWT;
- the claims: `iss`, `aud`, `exp`, `iat` and `jti` present; `iss` an allowed
  issuer; `aud` (a string or an array) naming the endpoint being called; `exp`
  not passed and `iat` (and `nbf`, if any) not in the future, each with
  `leeway` seconds for clock skew; `exp` at most `max_lifetime` seconds ahead;
- `jti` not seen before from that issuer: each accepted `(iss, jti)` is kept
  until its `exp` (plus leeway) has passed, at most `max_jtis` of them; when
  that many unexpired tokens are held the verifier refuses new ones rather than
  forget one (fail closed), and `max_lifetime` bounds how long any is held.

Algorithms: RS384 and ES384, the two the specification recommends, by default.
RS256, ES256, RS512, ES512 and PS256/384/512 can be allowed with `algorithms=`
for a client that signs with them: none is weak (RSA of 2048 bits or more,
NIST curves), but an allow-list holds what the clients in use need, not all a
library can do.
"""

from __future__ import annotations

import hmac
import json
import math
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from heapq import heappop, heappush
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from otrules import OtrulesError

__all__ = [
    "DEFAULT_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "AuthError",
    "JwksError",
    "JwtVerifier",
    "bearer_token",
    "check_bearer",
    "load_jwks",
]

DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS384", "ES384")
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
_EC_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_MIN_RSA_BITS = 2048
MAX_TOKEN_CHARS = 8192  # a CDS Hooks JWT is a few hundred characters; refuse big ones before parsing
_REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")


class AuthError(OtrulesError):
    """A caller that is not let in (HTTP 401). `reason` says why, without any part of the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwksError(OtrulesError, ValueError):
    """A JWK Set that cannot be used (a configuration error: `otrules serve` exits 2)."""


class JwtVerifier:
    """Verifies CDS Hooks client JWTs against a JWK Set.

    `audience_of` turns the endpoint being called into the URL a token's `aud`
    must name: either the service's external base URL (`https://cds.example.org`,
    to which the path is appended) or a function of the path. It is configured,
    not taken from the request's Host header, which the caller controls.
    """

    def __init__(
        self,
        jwks: Mapping[str, Any],
        issuers: Iterable[str],
        audience_of: str | Callable[[str], str],
        clock: Callable[[], float] = time.time,
        leeway: int = 30,
        *,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        jkus: Iterable[str] | None = None,
        max_lifetime: int = 3600,
        max_jtis: int = 100_000,
    ) -> None:
        self._algorithms = tuple(dict.fromkeys(algorithms))
        refused = [a for a in self._algorithms if a not in SUPPORTED_ALGORITHMS]
        if refused or not self._algorithms:
            raise ValueError(f"JWT algorithms must be some of {', '.join(sorted(SUPPORTED_ALGORITHMS))} "
                             f"(CDS Hooks forbids none and HMAC); got {', '.join(refused) or 'none at all'}")
        self._issuers = frozenset(issuers)
        if not self._issuers:
            raise ValueError("at least one allowed issuer (iss) is needed")
        if isinstance(audience_of, str):
            base = audience_of.rstrip("/")
            if not base.startswith(("https://", "http://")):
                raise ValueError("the base URL for aud must be an absolute http(s) URL")
            self._audience_of: Callable[[str], str] = lambda path: base + "/" + path.lstrip("/")
        else:
            self._audience_of = audience_of
        self._clock = clock
        self._leeway = leeway
        self._jkus = None if jkus is None else frozenset(jkus)
        self._max_lifetime = max_lifetime
        self._max_jtis = max_jtis
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], float] = {}  # (iss, jti) -> time after which it may be forgotten
        self._expiry: list[tuple[float, tuple[str, str]]] = []  # a heap of the same, soonest first
        self._keys = self._load_keys(jwks)

    # ------------------------------------------------------------ keys

    def set_keys(self, jwks: Mapping[str, Any]) -> None:
        """Replace the JWK Set (key rotation); the replay memory is kept."""
        keys = self._load_keys(jwks)
        with self._lock:
            self._keys = keys

    def _load_keys(self, jwks: Mapping[str, Any]) -> dict[str, dict[str, jwt.PyJWK]]:
        """kid -> {alg: key} for every allowed algorithm that fits the key."""
        if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
            raise JwksError("a JWK Set is a JSON object with an array `keys`")
        out: dict[str, dict[str, jwt.PyJWK]] = {}
        for i, jwk in enumerate(jwks["keys"]):
            where = f"JWKS keys[{i}]"
            if not isinstance(jwk, dict):
                raise JwksError(f"{where}: must be an object")
            kid = jwk.get("kid")
            if not isinstance(kid, str) or not kid:
                raise JwksError(f"{where}: has no kid (CDS Hooks tokens name their key by kid)")
            if kid in out:
                raise JwksError(f"{where}: kid is used by an earlier key (a kid must be unique in the set)")
            if "d" in jwk or "p" in jwk or "k" in jwk:
                raise JwksError(f"{where}: holds private or symmetric key material; give the public keys only")
            kty = jwk.get("kty")
            if kty not in ("RSA", "EC"):
                raise JwksError(f"{where}: kty must be RSA or EC")
            if jwk.get("use", "sig") != "sig":
                out[kid] = {}  # an encryption key: known, but verifies nothing
                continue
            fits: dict[str, jwt.PyJWK] = {}
            for alg in self._algorithms:
                if "alg" in jwk and jwk["alg"] != alg:
                    continue
                if kty == "RSA" and alg[:2] not in ("RS", "PS"):
                    continue
                if kty == "EC" and _EC_CURVE.get(alg) != jwk.get("crv"):
                    continue
                try:
                    key = jwt.PyJWK(jwk, algorithm=alg)
                except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                    raise JwksError(f"{where}: is not a valid {kty} public key") from None
                if isinstance(key.key, RSAPublicKey) and key.key.key_size < _MIN_RSA_BITS:
                    raise JwksError(f"{where}: an RSA key must have at least {_MIN_RSA_BITS} bits")
                fits[alg] = key
            out[kid] = fits
        return out

    # ------------------------------------------------------------ verification

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """The token's claims, once every check has passed; `AuthError` otherwise.

        `audience` is the endpoint being called: a path (`/cds-services/otrules`),
        made a URL by `audience_of`, or an absolute URL used as it is.
        """
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise AuthError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthError("algorithm not allowed")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.upper() != "JWT":
            raise AuthError("token header typ must be JWT")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("token header has no kid")
        if self._jkus is not None and "jku" in header and header["jku"] not in self._jkus:
            raise AuthError("jku not allowed")
        keys = self._keys.get(kid)
        if keys is None:
            raise AuthError("unknown key id")
        key = keys.get(alg)
        if key is None:
            raise AuthError("algorithm does not fit the key")
        try:
            claims = jwt.decode(token, key=key, algorithms=list(self._algorithms), options=_SIGNATURE_ONLY)
        except jwt.InvalidSignatureError:
            raise AuthError("bad signature") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("algorithm not allowed") from None
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        if not isinstance(claims, dict):
            raise AuthError("malformed token")
        self._check_claims(claims, audience)
        return claims

    def _check_claims(self, claims: dict[str, Any], audience: str) -> None:
        for name in _REQUIRED_CLAIMS:
            if name not in claims:
                raise AuthError(f"missing claim: {name}")
        iss = claims["iss"]
        if not isinstance(iss, str) or iss not in self._issuers:
            raise AuthError("issuer not allowed")
        expected = _without_slash(audience if audience.startswith(("https://", "http://"))
                                  else self._audience_of(audience))
        aud = claims["aud"]
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or not all(isinstance(a, str) for a in auds):
            raise AuthError("claim aud must be a string or an array of strings")
        if expected not in {_without_slash(a) for a in auds}:
            raise AuthError("audience does not match the endpoint")
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise AuthError(f"claim {name} must be a number of seconds")
        now = self._clock()
        exp, iat = float(claims["exp"]), float(claims["iat"])
        if now > exp + self._leeway:
            raise AuthError("token expired")
        if iat > now + self._leeway:
            raise AuthError("token issued in the future")
        if "nbf" in claims and float(claims["nbf"]) > now + self._leeway:
            raise AuthError("token not yet valid")
        if exp > now + self._max_lifetime + self._leeway:
            raise AuthError(f"token expires more than {self._max_lifetime} seconds ahead")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise AuthError("claim jti must be a string of 1 to 256 characters")
        self._remember(iss, jti, exp + self._leeway, now)

    def _remember(self, iss: str, jti: str, until: float, now: float) -> None:
        with self._lock:
            while self._expiry and self._expiry[0][0] < now:
                _, old = heappop(self._expiry)
                if self._seen.get(old, math.inf) < now:
                    del self._seen[old]
            if (iss, jti) in self._seen:
                raise AuthError("replayed jti")
            if len(self._seen) >= self._max_jtis:
                raise AuthError("too many unexpired tokens to remember; try again later")
            self._seen[(iss, jti)] = until
            heappush(self._expiry, (until, (iss, jti)))

    def remembered(self) -> int:
        """How many `(iss, jti)` pairs are held against replay."""
        with self._lock:
            return len(self._seen)


_SIGNATURE_ONLY: Any = {  # PyJWT checks the signature; the claims are checked above, against `clock`
    "verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False,
    "verify_iss": False, "verify_sub": False, "verify_jti": False, "require": [],
    "enforce_minimum_key_length": True,
}


def _without_slash(url: str) -> str:
    return url[:-1] if url.endswith("/") else url


# ---------------------------------------------------------------- loading a JWK Set

_MAX_JWKS_BYTES = 1_000_000


def load_jwks(source: str | Path, timeout: float = 5.0) -> dict[str, Any]:
    """A JWK Set from a file, or from an https URL (within `timeout` seconds); `JwksError` if unusable."""
    text = str(source)
    if text.startswith("http://"):
        raise JwksError("a JWKS URL must be https")
    if text.startswith("https://"):
        request = urllib.request.Request(text, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read(_MAX_JWKS_BYTES + 1)
        except (OSError, ValueError) as e:
            raise JwksError(f"cannot fetch the JWKS from {text}: {e}") from None
    else:
        try:
            with open(source, "rb") as f:
                raw = f.read(_MAX_JWKS_BYTES + 1)
        except OSError as e:
            raise JwksError(f"cannot read the JWKS file {text}: {e.strerror or e}") from None
    if len(raw) > _MAX_JWKS_BYTES:
        raise JwksError(f"the JWKS from {text} is larger than {_MAX_JWKS_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise JwksError(f"the JWKS from {text} is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError(f"the JWKS from {text} is not a JSON object with an array `keys`")
    return doc


# ---------------------------------------------------------------- the dashboard's bearer token


def bearer_token(header_value: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; `AuthError` if there is none."""
    if header_value is None:
        raise AuthError("no Authorization header")
    scheme, _, value = header_value.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise AuthError("Authorization is not a Bearer token")
    return value


def check_bearer(header_value: str | None, token: str) -> bool:
    """Whether an Authorization header presents `token`, compared in constant time. Never with an empty token."""
    if not token:
        return False
    try:
        presented = bearer_token(header_value)
    except AuthError:
        return False
    return hmac.compare_digest(presented.encode(), token.encode())
