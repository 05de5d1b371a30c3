r"""The one error a trigger can fail with: where it went wrong and what would have been valid.

Every message has the same shape, ``<what> at column <N>; expected <what would do>``,
with a 1-based column counted in characters of the expression as written, so the
engine can add the callback's name in front and hand it to a client unchanged. A
control or bidi character the submitter wrote is shown as an escape (``\x1b``,
``\u202e``: executor.visible_text), in the message and under the caret alike: the
message reaches terminals and the log, where it would act instead of showing.
"""

from __future__ import annotations

from typing import Final

from executor.visible_text import escaped

# How much of a long expression ``pretty()`` shows on either side of the caret.
_WINDOW_BEFORE: Final = 40
_WINDOW_AFTER: Final = 36
_ELLIPSIS: Final = "..."


class TriggerSyntaxError(ValueError):
    """A trigger expression that does not parse.

    Attributes:
        reason: What is wrong, e.g. ``unknown event type 'jb'``.
        column: 1-based column of the offending character (one past the end for
            "unexpected end of trigger").
        expected: What would have been valid there.
        expression: The expression (or list item) that failed.
        item: Index of the failing item for a list-valued trigger, else None.
    """

    def __init__(
        self,
        reason: str,
        column: int,
        expected: str,
        expression: str,
        item: int | None = None,
    ) -> None:
        prefix = "" if item is None else f"trigger list item {item}: "
        super().__init__(escaped(f"{prefix}{reason} at column {column}; expected {expected}"))
        self.reason = reason
        self.column = column
        self.expected = expected
        self.expression = expression
        self.item = item

    def __reduce__(self) -> tuple[type[TriggerSyntaxError], tuple[str, int, str, str, int | None]]:
        # The constructor takes more than the message: rebuild from the fields.
        return (
            TriggerSyntaxError,
            (self.reason, self.column, self.expected, self.expression, self.item),
        )

    def with_item(self, item: int) -> TriggerSyntaxError:
        """The same error, labelled as coming from item ``item`` of a trigger list."""
        return TriggerSyntaxError(
            self.reason, self.column, self.expected, self.expression, item=item
        )

    def pretty(self) -> str:
        """The message, then the expression with a caret under the offending column.

        Long expressions are cut to a window around the column; tabs and newlines
        are shown as spaces so that the caret lines up.
        """
        text = "".join(" " if ch.isspace() else ch for ch in self.expression)
        index = max(self.column - 1, 0)
        start = max(index - _WINDOW_BEFORE, 0)
        end = min(index + _WINDOW_AFTER, len(text))
        shown = escaped(text[start:end])
        caret = len(escaped(text[start:index]))  # an escape before it is wider than one
        if start > 0:
            shown = _ELLIPSIS + shown
            caret += len(_ELLIPSIS)
        if end < len(text):
            shown += _ELLIPSIS
        return f"{self}\n  {shown}\n  {' ' * caret}^"
