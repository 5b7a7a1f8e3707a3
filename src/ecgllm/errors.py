"""The base of every error caused by what a user gave ecgllm (a file, a folder, a recipe).

Each layer raises its own subclass with a message that names the input and what to do; the command line
catches this one base and prints the message with exit code 3, never a traceback.
"""


class InputError(Exception):
    """Something the user supplied cannot be used; ``str(error)`` says what and how to fix it."""


class RecipeError(InputError):
    """A training recipe is missing a key, has an unknown one, or a value of the wrong kind."""
