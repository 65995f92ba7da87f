"""Errors a user can cause. The CLI prints them as one line and exits 2; the server maps them to 4xx."""


class SwiftError(Exception):
    """Bad input: an unknown name, a missing path, a value out of range. Never a bug of ours."""

    exit_code = 2


class ArgumentError(SwiftError):
    """A command-line or config value that cannot be used."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param
        """The request field at fault (the server's `param`), where there is one."""


class ModelNotFoundError(SwiftError):
    """A model_type, hub id, checkpoint or adapter that does not exist."""


class ContextLengthError(SwiftError):
    """A prompt that does not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_length: int, max_new_tokens: int | None = None):
        self.prompt_tokens, self.max_length, self.max_new_tokens = prompt_tokens, max_length, max_new_tokens
        if max_new_tokens is None:
            msg = (f"This model's maximum context length is {max_length} tokens. However, your request has "
                   f"{prompt_tokens} input tokens. Please reduce the length of the input.")
        else:
            msg = (f"'max_tokens' is too large: {max_new_tokens}. This model's maximum context length is "
                   f"{max_length} tokens and your request has {prompt_tokens} input tokens "
                   f"({max_new_tokens} > {max_length} - {prompt_tokens}).")
        super().__init__(msg)


def closest(name: str, choices, n: int = 3) -> list[str]:
    """Names from `choices` that look like `name`, for 'did you mean' hints."""
    import difflib

    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
