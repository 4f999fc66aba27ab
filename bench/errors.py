"""One error type for bad input: it names where (file, line) and what was expected.

The CLI prints it as a single line and exits 2, before any result is written.
"""


class InputError(Exception):
    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.message = message
        self.file = file
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        return where + self.message
