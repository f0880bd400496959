"""JWT bearer tokens → Principal. HS256 with a secret the operator puts in an
environment variable (the [server] table names the variable, never the secret), and
RS256/ES256/EdDSA with the public keys of a JWKS file ([server] jwks_file, jwks.py,
reloaded when it changes; the header's kid names the key). The algorithm is pinned: HS256
verifies only with the secret, an asymmetric token only with its kid's key and only in
that key's one algorithm; anything else (`none`, an unknown kid, RS256 named on an EC key,
HS256 when no secret is set — the HS/RS confusion) is refused before a signature is
looked at. `iss`, `aud`, `exp`, `nbf`, `iat` and `sub` are required; a token living longer than jwt_max_lifetime is
refused. Roles come from the roles claim (unknown names are dropped); a service token's
keys come from the keys claim (absent: no keys).

A token that passed every check is remembered by its exact string (a bounded LRU of
what the claims gave: subject, roles, keys, session, key) until its `exp` (+ leeway),
so a client sending the same token again skips the signature and claim checks; a
refused token is never remembered, and a JWKS reload (the set of keys changed: one may
have been retired) forgets them all."""

import hashlib
import threading
import time
from collections import OrderedDict

import jwt

from ..principal import Principal
from .errors import ApiError
from .jwks import ALGORITHMS as JWKS_ALGORITHMS, JwksFile
from .roles import ROLES

ALGORITHM = "HS256"
MAX_TOKEN = 8192
CACHE_SIZE = 4096


class Authenticator:
    def __init__(self, settings, secret: bytes, on_failure=lambda reason: None):
        self.jwks = JwksFile(settings.jwks_file) if settings.jwks_file else None
        if secret and len(secret) < 32 or not secret and self.jwks is None:
            raise ValueError("the JWT secret must be at least 32 bytes")
        self.settings = settings
        self._secret = secret or None                            # None: HS256 tokens are refused
        self._kid = hashlib.sha256(secret).hexdigest()[:16] if secret else ""   # names the key, reveals nothing
        self.on_failure = on_failure
        self.failures = 0
        self._verified: OrderedDict = OrderedDict()     # token -> (valid until, principal fields)
        self._cache_lock = threading.Lock()
        self._generation = 0                            # the JWKS generation the cache holds tokens of
        self.cache_hits = self.cache_misses = 0

    def _refuse(self, reason: str, message: str):
        self.failures += 1
        self.on_failure(reason)
        raise ApiError(401, "unauthenticated", message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    def _key(self, header) -> tuple:
        """(verification key, its one algorithm, the client name for the audit) for a
        token header, or refused."""
        alg = header.get("alg")
        if alg == ALGORITHM and self._secret is not None:
            return self._secret, ALGORITHM, f"jwt:{self._kid}"
        if self.jwks is None or alg not in self.jwks_algorithms():
            self._refuse("algorithm", f"{'/'.join(self.algorithms())} tokens are accepted, not {str(alg)[:16]!r}")
        found = self.jwks.get(header.get("kid"))
        if found is None:
            self._refuse("unknown_key", "the bearer token's kid names no key of this service")
        if found.alg != alg:
            self._refuse("algorithm", f"the key {found.kid!r} verifies {found.alg} tokens only")
        return found.key, found.alg, f"jwt:{found.kid}"

    def jwks_algorithms(self) -> tuple:
        return tuple(JWKS_ALGORITHMS) if self.jwks is not None else ()

    def algorithms(self) -> tuple:
        return ((ALGORITHM,) if self._secret is not None else ()) + self.jwks_algorithms()

    def principal(self, authorization: str | None, correlation_id: str, source: str, client: str = "") -> Principal:
        """`client`: the mTLS client certificate's fingerprint, when there is one (else
        the JWT key's id names the client)."""
        if not authorization:
            self.failures += 1
            self.on_failure("missing")
            raise ApiError(401, "unauthenticated", "a bearer token is required",
                           headers={"WWW-Authenticate": "Bearer"})
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self._refuse("malformed", "the Authorization header is not a bearer token")
        if len(token) > MAX_TOKEN:
            self._refuse("malformed", "the bearer token is too long")
        fields = self._remembered(token)
        if fields is None:
            fields = self._verify(token)
        sub, roles, keys, session, key_client = fields
        return Principal(subject=sub, roles=roles, interface="rest", session=session,
                         client=client or key_client, source=source, correlation_id=correlation_id, keys=keys)

    def _remembered(self, token: str):
        """The principal fields of a token verified before and not expired since, else None."""
        generation = self.jwks.generation() if self.jwks is not None else 0
        now = time.time()
        with self._cache_lock:
            if generation != self._generation:
                self._verified.clear()
                self._generation = generation
            entry = self._verified.get(token)
            if entry is not None and now < entry[0]:
                self._verified.move_to_end(token)
                self.cache_hits += 1
                return entry[1]
            if entry is not None:
                del self._verified[token]
            self.cache_misses += 1
        return None

    def _remember(self, token: str, until: float, fields: tuple, generation: int) -> None:
        with self._cache_lock:
            if generation != self._generation:       # verified with keys a reload has replaced since
                return
            self._verified[token] = (until, fields)
            while len(self._verified) > CACHE_SIZE:
                self._verified.popitem(last=False)

    def _verify(self, token: str) -> tuple:
        """Every check of a token not remembered; its principal fields, remembered."""
        s = self.settings
        generation = self._generation
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            self._refuse("malformed", "the bearer token is not a JWT")
        key, alg, key_client = self._key(header)
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=s.jwt_audience,
                                issuer=s.jwt_issuer, leeway=s.jwt_leeway,
                                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            self._refuse("expired", "the bearer token has expired")
        except jwt.ImmatureSignatureError:
            self._refuse("not_yet_valid", "the bearer token is not valid yet")
        except jwt.InvalidSignatureError:
            self._refuse("signature", "the bearer token's signature does not verify")
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            self._refuse("issuer_audience", "the bearer token is not for this service")
        except jwt.PyJWTError as exc:
            self._refuse("invalid", f"the bearer token is invalid ({type(exc).__name__})")
        exp, iat = claims["exp"], claims["iat"]
        if not all(isinstance(v, (int, float)) for v in (exp, iat)) or exp - iat > s.jwt_max_lifetime:
            self._refuse("lifetime", f"a bearer token lives at most {s.jwt_max_lifetime} s")
        sub = claims["sub"]
        if not isinstance(sub, str) or not 1 <= len(sub) <= 256:
            self._refuse("invalid", "sub must be a string")
        roles = claims.get(s.roles_claim, [])
        if isinstance(roles, str):
            roles = roles.split()
        if not isinstance(roles, list):
            self._refuse("invalid", f"{s.roles_claim} must be a list of role names")
        roles = frozenset(r for r in roles if r in ROLES)
        keys = None
        if "service" in roles:
            named = claims.get(s.keys_claim, [])
            if not isinstance(named, list) or not all(isinstance(k, str) for k in named):
                self._refuse("invalid", f"{s.keys_claim} must be a list of key names or ids")
            keys = frozenset(named)
        session = claims.get("jti") or claims.get("sid") or ""
        fields = (sub, roles, keys, str(session)[:128], key_client)
        self._remember(token, exp + s.jwt_leeway, fields, generation)
        return fields
