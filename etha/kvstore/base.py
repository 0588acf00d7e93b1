"""The abstract key-value store every rendezvous backend implements.

Keys are scoped: the key ``k`` written with component ``c`` by a store whose namespace is ``n``
lives on the server as ``n/c/k``. Two stores with different namespaces (two jobs), or two calls
with different components (two subsystems of one job), never see each other's keys. Every method
takes and returns *unscoped* keys.

All methods block the calling thread. Methods without a ``timeout`` parameter are bounded by the
store's own timeout (given to the constructor); the ``wait_*`` methods are bounded by their
``timeout`` argument and raise :class:`TimeoutError` (:class:`~etha.kvstore.errors.StoreTimeoutError`)
within that timeout plus a small margin, also when the server stops answering.
"""

from __future__ import annotations

import abc
import functools
import math
import re
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from etha.kvstore.errors import InvalidArgumentError, StoreLimitError

WILDCARD = "*"


class KVStore(abc.ABC):
    """A key-value store for rendezvous, shared by every worker of one job.

    Args (common to implementations):
        namespace: Prefix that isolates one job's keys from another's.
        component: Default component (second prefix) for calls that do not pass one.

    Raises (any method):
        StoreConnectionError: The server is unreachable or the connection broke.
        InvalidArgumentError: A key, value, pattern or timeout is malformed (a ``ValueError``).
        StoreLimitError: A key or value is larger than the backend accepts (a ``ValueError``).
    """

    #: Largest scoped key, in UTF-8 bytes, the backend accepts.
    max_key_bytes: int = 8191
    #: Largest value, in bytes, the backend accepts.
    max_value_bytes: int = 8 * 1024 * 1024

    def __init__(self, namespace: str = "default", component: str = "tensorbus") -> None:
        _require_name("namespace", namespace)
        _require_name("component", component)
        self.namespace = namespace
        self.component = component

    # --- scoping and validation, shared by every backend ------------------------------------

    def _root(self, component: str | None) -> str:
        """The prefix of every key of ``component`` (default: the store's): ``namespace/component/``."""
        comp = self.component if component is None else component
        _require_name("component", comp)
        return f"{self.namespace}/{comp}/"

    def _scoped(self, key: str, component: str | None) -> str:
        """Return the server-side name of ``key``, after validating it."""
        check_str("key", key)
        root = self._root(component)
        self._check_keys_fit(root, [key])
        return root + key

    def _check_keys_fit(self, root: str, keys: Sequence[str]) -> None:
        """Check that no key is empty and each fits the backend's limit once prefixed by ``root``."""
        if not keys:
            return
        if min(map(len, keys)) == 0:
            raise InvalidArgumentError("key must be a non-empty string, got ''.")
        room = self.max_key_bytes - len(root.encode("utf-8"))
        if max(map(len, keys)) * 4 <= room:  # no key can be over, whatever its characters
            return
        for key in keys:
            size = len(key.encode("utf-8", "surrogatepass"))
            if size > room:
                raise StoreLimitError(
                    f"key {_abbrev(key)} is {size + len(root.encode())} bytes once scoped as "
                    f"'{root}...'; the limit is {self.max_key_bytes} bytes."
                )

    def _check_value(self, key: str, value: bytes) -> None:
        if len(value) > self.max_value_bytes:
            raise StoreLimitError(
                f"value for key {_abbrev(key)} is {len(value)} bytes; "
                f"the limit is {self.max_value_bytes} bytes."
            )

    # --- the API --------------------------------------------------------------------------

    @abc.abstractmethod
    def set(self, key: str, value: str, *, component: str | None = None) -> None:
        """Set ``key`` to ``value``, replacing any previous value. Does not block on other clients.

        Raises:
            InvalidArgumentError: ``value`` is not a ``str``.
            StoreLimitError: the key or the encoded value is over the backend's limit.
        """

    @abc.abstractmethod
    def get(self, key: str, *, component: str | None = None) -> bytes | None:
        """Return the value of ``key``, or ``None`` when it is not set. Never waits for the key."""

    @abc.abstractmethod
    def set_bytes(self, key: str, data: bytes, *, component: str | None = None) -> None:
        """Store arbitrary bytes (NUL included) under ``key``; :meth:`get_bytes` returns them unchanged."""

    @abc.abstractmethod
    def get_bytes(self, key: str, *, component: str | None = None) -> bytes | None:
        """Return the bytes stored by :meth:`set_bytes`, or ``None`` when the key is not set."""

    @abc.abstractmethod
    def exists(self, key: str, *, component: str | None = None) -> bool:
        """Return whether ``key`` is set. Never waits for the key."""

    @abc.abstractmethod
    def delete(self, key: str, *, component: str | None = None) -> bool:
        """Remove ``key``. Returns ``True`` if it existed, ``False`` otherwise."""

    @abc.abstractmethod
    def wait_for_key(self, key: str, timeout: float = 3600.0, *, component: str | None = None) -> bytes:
        """Block until ``key`` is set, then return its value.

        Raises:
            TimeoutError: ``key`` was not set within ``timeout`` seconds.
            InvalidArgumentError: ``timeout`` is negative or not a number.
        """

    @abc.abstractmethod
    def wait_for_keys(
        self,
        key_pattern: str,
        expected_count: int,
        value: str = "1",
        timeout: float = 3600.0,
        candidate_keys: list[str] | None = None,
        *,
        component: str | None = None,
    ) -> list[str]:
        """Block until at least ``expected_count`` keys match ``key_pattern`` and hold ``value``.

        Args:
            key_pattern: A key with exactly one ``*``, which matches any run of characters
                (possibly empty), e.g. ``"rank/*"``.
            expected_count: How many matching keys to wait for (at least 1).
            value: Only keys whose value equals this string count.
            timeout: Seconds to wait at most.
            candidate_keys: The keys to consider. Backends that cannot list keys require it.
            component: Override the default component for this call.

        Returns:
            The matching keys that hold ``value``, unscoped (as the caller wrote them), in
            candidate order (backends that list keys: sorted); at least ``expected_count`` of them.

        Raises:
            TimeoutError: fewer than ``expected_count`` keys matched within ``timeout``.
            ValueError: ``candidate_keys`` is missing where the backend needs it, the pattern
                does not hold exactly one ``*``, or ``expected_count`` is below 1.
        """

    @abc.abstractmethod
    def wait_for_value(
        self, key: str, expected: str, timeout: float = 3600.0, *, component: str | None = None
    ) -> bytes:
        """Block until ``key`` holds ``expected``, then return that value (as bytes).

        Raises:
            TimeoutError: ``key`` did not hold ``expected`` within ``timeout`` seconds.
        """

    @abc.abstractmethod
    def close(self, cleanup: bool = True) -> None:
        """Release every connection. Idempotent; the store is unusable afterwards.

        Never deletes keys, whoever wrote them: other ranks may still read them while the job
        runs (a ``with`` block calls this). Each backend says when a job's keys go.

        Args:
            cleanup: Accepted for the seed's signature; no backend deletes keys on close.
        """

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- pure helpers, shared by backends --------------------------------------------------------


def split_pattern(pattern: str) -> tuple[str, str]:
    """Split a one-wildcard pattern into (prefix, suffix).

    >>> split_pattern("rank/*/ready")
    ('rank/', '/ready')
    """
    if not isinstance(pattern, str):
        raise InvalidArgumentError(f"key_pattern must be a str, got {type(pattern).__name__}.")
    count = pattern.count(WILDCARD)
    if count != 1:
        raise InvalidArgumentError(
            f"key_pattern {pattern!r} must contain exactly one '*' wildcard, found {count}."
        )
    prefix, suffix = pattern.split(WILDCARD)
    return prefix, suffix


def matches(prefix: str, suffix: str, key: str) -> bool:
    """Whether ``key`` matches the pattern ``prefix*suffix``."""
    return len(key) >= len(prefix) + len(suffix) and key.startswith(prefix) and key.endswith(suffix)


def select(keys: list[str], prefix: str, suffix: str) -> list[str]:
    """The distinct ``keys`` matching ``prefix*suffix``, in first-seen order; checks they are str.

    Runs in C for the common case: the keys are joined with NUL and one regular expression finds
    the matches, instead of a Python-level test per key (N waiters x N keys adds up).
    """
    try:
        joined = "\x00".join(keys)
    except TypeError:
        bad = next(k for k in keys if not isinstance(k, str))
        raise InvalidArgumentError(
            f"candidate_keys must hold only str, got {type(bad).__name__} ({_abbrev(bad)})."
        ) from None
    if not prefix and not suffix:
        return list(dict.fromkeys(keys))
    if "\x00" in prefix or "\x00" in suffix or joined.count("\x00") != len(keys) - 1:
        least = len(prefix) + len(suffix)  # a key holds NUL: test each key in Python
        found = [k for k in keys if k.startswith(prefix) and k.endswith(suffix) and len(k) >= least]
    else:
        found = _pattern(prefix, suffix).findall(joined)
    return list(dict.fromkeys(found))


@functools.lru_cache(maxsize=64)
def _pattern(prefix: str, suffix: str) -> re.Pattern[str]:
    return re.compile(f"(?:(?<=\x00)|^){re.escape(prefix)}[^\x00]*{re.escape(suffix)}(?=\x00|$)")


def check_wait_for_keys(
    pattern: str, count: int, value: str, candidates: list[str] | None
) -> tuple[str, str, list[str] | None]:
    """Validate a ``wait_for_keys`` request: returns the pattern's (prefix, suffix) and the
    distinct candidates that match it (None when no candidates were given)."""
    prefix, suffix = split_pattern(pattern)
    check_count(count)
    check_str("value", value)
    if candidates is None:
        return prefix, suffix, None
    matching = select(candidates, prefix, suffix)
    if len(matching) < count:
        raise InvalidArgumentError(
            f"expected_count ({count}) exceeds the {len(matching)} candidate keys "
            f"matching {pattern!r}; it could never be reached."
        )
    return prefix, suffix, matching


def check_timeout(timeout: float, name: str = "timeout") -> float:
    """Return ``timeout`` as a float after checking it is a non-negative number of seconds."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArgumentError(f"{name} must be a number of seconds, got {timeout!r}.")
    if math.isnan(timeout) or timeout < 0:
        raise InvalidArgumentError(f"{name} ({timeout!r}) must be a number of seconds >= 0.")
    return float(timeout)


def check_count(expected_count: int) -> int:
    if isinstance(expected_count, bool) or not isinstance(expected_count, int) or expected_count < 1:
        raise InvalidArgumentError(f"expected_count ({expected_count!r}) must be an integer >= 1.")
    return expected_count


def check_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{name} must be a str, got {type(value).__name__} ({_abbrev(value)}).")
    return value


def check_keys(candidate_keys: Sequence[str] | None) -> list[str]:
    if candidate_keys is None:
        raise InvalidArgumentError(
            "candidate_keys is required: this store cannot list keys, so pass the keys to consider."
        )
    if isinstance(candidate_keys, str) or not isinstance(candidate_keys, Sequence):
        raise InvalidArgumentError(
            f"candidate_keys must be a list of str, got {type(candidate_keys).__name__}."
        )
    return list(candidate_keys)


def _require_name(what: str, name: object) -> None:
    if not isinstance(name, str) or not name or "/" in name or "\x00" in name:
        raise InvalidArgumentError(
            f"{what} must be a non-empty string without '/' or NUL (it prefixes keys), got {name!r}."
        )


def _abbrev(value: object, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 3]}..."
