"""Storage errors the layers above translate (FHIR: OperationOutcome; UI: a message)."""


class StorageError(Exception):
    pass


class NotFound(StorageError):
    pass


class Gone(StorageError):
    """The resource existed and was deleted."""


class VersionConflict(StorageError):
    def __init__(self, expected: int, actual: int):
        super().__init__(f"version conflict: expected version {expected}, current is {actual}")
        self.expected, self.actual = expected, actual


class StoreUnavailable(StorageError):
    """The image store or the database cannot take a write now; nothing was half-written."""
