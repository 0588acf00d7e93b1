"""The one error hierarchy of the worker-side store.

Every error the store raises on purpose derives from :class:`KVStoreError`, and also from the
builtin a caller would naturally catch (``TimeoutError``, ``ConnectionError``, ``ValueError``),
so ``except TimeoutError`` keeps working as the seed API documents.
"""


class KVStoreError(Exception):
    """Base class of every error raised by etha.kvstore."""


class StoreConnectionError(KVStoreError, ConnectionError):
    """The store's server could not be reached, or the connection broke."""


class StoreLeaseError(StoreConnectionError):
    """The store's lease expired or was revoked: the keys written through it are gone."""


class StoreTimeoutError(KVStoreError, TimeoutError):
    """An operation did not complete within its timeout."""


class InvalidArgumentError(KVStoreError, ValueError):
    """An argument has the wrong type or value (empty key, bad pattern, negative timeout...)."""


class StoreLimitError(InvalidArgumentError):
    """A key, value or request is larger than the backend accepts."""


class StoreConfigError(KVStoreError, ValueError):
    """The environment does not describe a store (a variable is missing or malformed)."""
