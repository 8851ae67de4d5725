class ImageRejected(ValueError):
    """The file is not an acceptable chest radiograph. ``code`` is stable, ``reason`` is for people."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason
