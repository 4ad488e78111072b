"""The sign-in limiter: atomic attempt counters in Redis, per username, per client address and per pair.

Why it is built this way:

**Atomic admission.** The old limiter asked "is this pair blocked?" and raised the count only after
the password check had failed, so twenty attempts sent at once all passed the question before any of
them was counted (22 of 40 were checked against a limit of 5). Here one Lua script, which Redis runs
without interleaving anything else, checks every counter *and* counts the attempt before the password
is looked at: however many arrive together, at most the limit of them get a password check. A
successful sign-in then gives its attempt back (:meth:`LoginLimiter.succeeded`), so the counters
count failures plus attempts still being checked.

**Three counters, each against a different attack, each with its own limit** (one window,
``window_s``, fixed from a counter's first attempt):

- *username at address* (``limit``, 5): one client guessing one account. This is the counter a
  guesser hits first, and it refuses the right password too, but only from that address: the nurse
  at her own station is not locked out by someone else's guessing.
- *address* (``address_limit``, 20, failures of any username): one client spraying a common password
  over many accounts. It is higher than the pair limit so that one shared address (a ward behind NAT)
  survives a few nurses' typos; with ``PAINLINE_TRUSTED_PROXIES`` unset behind a reverse proxy every
  client shares the proxy's address, which is why that setting exists.
- *username* (``user_limit``, 50, failures from all addresses together): many clients guessing one
  account. This is the only counter a stranger could use to lock a nurse out (the lockout-DoS: it
  takes at least ``user_limit / limit`` addresses), so once it is full the account is still let in
  from any address it has signed in from successfully in the last :data:`KNOWN_ADDRESS_TTL_S`
  (remembered by :meth:`LoginLimiter.succeeded`). The nurse's own station keeps working; the
  attacker's fresh addresses do not.

A refused attempt is not counted: it was never checked, and counting it would let one client push the
username counter up for free. Counter keys are HMACs of the username and address
(:func:`schema.contract.login_counter_key`), so neither sits in Redis in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass

from redis import Redis

from schema.contract import LoginCounter, known_address_key, login_counter_key

KNOWN_ADDRESS_TTL_S = 30 * 24 * 3600
"""How long a successful sign-in keeps its address exempt from the username-wide limit."""

_COUNTERS = (LoginCounter.USER_AT_ADDRESS, LoginCounter.ADDRESS, LoginCounter.USER)

# KEYS: pair, address, user, known.  ARGV: window (ms), pair limit, address limit, user limit.
# Returns {0, 0} when admitted (all three counted), else {index of the full counter, ms to wait}.
_ADMIT = """
local window = tonumber(ARGV[1])
local function full(i, limit)
    return tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(limit)
end
local function wait(i)
    local ms = redis.call('PTTL', KEYS[i])
    if ms < 0 then ms = window end
    return ms
end
if full(1, ARGV[2]) then return {1, wait(1)} end
if full(2, ARGV[3]) then return {2, wait(2)} end
if full(3, ARGV[4]) and redis.call('EXISTS', KEYS[4]) == 0 then return {3, wait(3)} end
for i = 1, 3 do
    redis.call('INCR', KEYS[i])
    if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], window) end
end
return {0, 0}
"""

# KEYS: pair, address, user, known.  ARGV: known-address TTL (s).
_SUCCEEDED = """
redis.call('DEL', KEYS[1])
for i = 2, 3 do
    if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
redis.call('SET', KEYS[4], '1', 'EX', tonumber(ARGV[1]))
return 1
"""


@dataclass(frozen=True)
class Admission:
    """The limiter's answer: ``refused_by`` is None when the password may be checked."""

    refused_by: LoginCounter | None = None
    retry_after_s: int = 0

    @property
    def admitted(self) -> bool:
        return self.refused_by is None


@dataclass(frozen=True)
class LoginLimiter:
    """See the module docstring. ``key`` (the app's secret) keys the HMACs; ``namespace`` the deployment."""

    redis: Redis
    key: bytes
    namespace: str
    limit: int = 5
    address_limit: int = 20
    user_limit: int = 50
    window_s: int = 300

    def _digest(self, *parts: str) -> str:
        return hmac.new(self.key, "\x00".join(parts).encode("utf-8"), hashlib.sha256).hexdigest()

    def _keys(self, username: str, address: str) -> list[str]:
        user = username.strip().lower()
        return [
            login_counter_key(self.namespace, LoginCounter.USER_AT_ADDRESS, self._digest("pair", user, address)),
            login_counter_key(self.namespace, LoginCounter.ADDRESS, self._digest("address", address)),
            login_counter_key(self.namespace, LoginCounter.USER, self._digest("user", user)),
            known_address_key(self.namespace, self._digest("known", user, address)),
        ]

    def admit(self, username: str, address: str) -> Admission:
        """Count this attempt if every limit allows it (then check the password); else say which refused."""
        full, wait_ms = self.redis.eval(
            _ADMIT,
            4,
            *self._keys(username, address),
            self.window_s * 1000,
            self.limit,
            self.address_limit,
            self.user_limit,
        )
        if int(full) == 0:
            return Admission()
        return Admission(_COUNTERS[int(full) - 1], max(1, math.ceil(int(wait_ms) / 1000)))

    def succeeded(self, username: str, address: str) -> None:
        """The attempt was the right password: give it back, clear the pair, remember the address."""
        self.redis.eval(_SUCCEEDED, 4, *self._keys(username, address), KNOWN_ADDRESS_TTL_S)


__all__ = ["KNOWN_ADDRESS_TTL_S", "Admission", "LoginLimiter"]
