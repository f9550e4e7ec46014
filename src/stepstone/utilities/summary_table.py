"""The text of a model summary: Lightning's column table, its totals and its number formats (pure formatting)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["format_summary_table", "get_formatted_model_size", "get_human_readable_count"]

_UNITS = (" ", "K", "M", "B", "T")
_TOTALS_WIDTH = 10  # the left column of the totals block


def get_human_readable_count(number: int | float) -> str:
    """Abbreviate a count with K, M, B or T, as Lightning's summary does.

    Args:
        number: a count >= 0.

    Returns:
        ``"123  "`` below a thousand, ``"1.2 K"`` / ``"2.0 M"`` with one decimal below 100 of a unit, ``"400 T"``
        from 100 on; never a larger unit than T (``"5,000 T"``).

    Raises:
        ValueError: ``number`` is negative.
    """
    if number < 0:
        raise ValueError(f"number={number!r} is negative; a parameter or FLOP count is >= 0.")
    digits = int(math.floor(math.log10(number)) + 1) if number > 0 else 1
    unit = min(math.ceil(digits / 3), len(_UNITS)) - 1
    scaled = number * 10 ** (-3 * unit)
    if unit == 0 or scaled >= 100:
        return f"{int(scaled):,d} {_UNITS[unit]}"
    return f"{scaled:,.1f} {_UNITS[unit]}"


def get_formatted_model_size(total_model_size: float) -> str:
    """A size in MB with three decimals and thousands separators (``"1,024.000"``).

    Args:
        total_model_size: the size in MB.

    Returns:
        The formatted size.
    """
    return f"{total_model_size:,.3f}"


def format_summary_table(
    total_parameters: int,
    trainable_parameters: int,
    model_size: float,
    total_training_modes: dict[str, int],
    total_flops: int,
    *columns: tuple[str, Sequence[str]],
) -> str:
    """Lay out the per-layer columns, then the totals block, exactly as Lightning prints them.

    Args:
        total_parameters: all parameters of the model.
        trainable_parameters: those with ``requires_grad``.
        model_size: estimated size of the parameters in MB.
        total_training_modes: ``{"train": n, "eval": m}`` submodules per mode (the root not counted).
        total_flops: FLOPs of one forward pass of the example input (0 without one).
        columns: ``(header, cells)`` per column, all with the same number of cells.

    Returns:
        The table: a header line, a rule, one line per layer, a rule, then seven total lines.
    """
    rows = len(columns[0][1]) if columns else 0
    widths = [max([len(header), *(len(str(cell)) for cell in cells)]) for header, cells in columns]
    # Lightning sizes the rule as if there were one more column than there is.
    rule = "-" * (sum(widths) + 3 * (len(columns) + 1))
    lines = [" | ".join(f"{header:<{w}}" for (header, _), w in zip(columns, widths, strict=True)), rule]
    for i in range(rows):
        lines.append(" | ".join(f"{cells[i]!s:<{w}}" for (_, cells), w in zip(columns, widths, strict=True)))
    lines.append(rule)
    totals = (
        (get_human_readable_count(trainable_parameters), "Trainable params"),
        (get_human_readable_count(total_parameters - trainable_parameters), "Non-trainable params"),
        (get_human_readable_count(total_parameters), "Total params"),
        (get_formatted_model_size(model_size), "Total estimated model params size (MB)"),
        (str(total_training_modes["train"]), "Modules in train mode"),
        (str(total_training_modes["eval"]), "Modules in eval mode"),
        (get_human_readable_count(total_flops), "Total Flops"),
    )
    lines.extend(f"{value:<{_TOTALS_WIDTH}}{label}" for value, label in totals)
    return "\n".join(lines)
