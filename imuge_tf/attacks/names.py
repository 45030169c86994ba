"""The check that an attack argument names only known choices (attacks, tampers, resize
methods, mask shapes), with one message for every such argument."""

__all__ = ["check_names"]


def check_names(kind, names, allowed):
    """`names` as a tuple; ValueError when it is empty or holds a name not in `allowed`.

    `kind` says what is named ("benign attacks", "resize_methods", ...) in the message.
    """
    names = tuple(names)
    if not names:
        raise ValueError(f"{kind} must not be empty; allowed names: {', '.join(allowed)}")
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"unknown {kind} {unknown!r}; allowed names: {', '.join(allowed)}")
    return names
