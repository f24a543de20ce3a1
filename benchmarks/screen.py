"""``bouquet bench screen``: the worst case of the personal-data screen, in µs.

The screen (:func:`bouquet.core.events.personal_data_in`) runs on every context value the
intake and the consumer accept, on client-controlled text, so its cost on the *worst*
input is what matters, not on a typical one. Timed here on a context value of the largest
size the contract allows (``MAX_CONTEXT_BYTES``) for each adversarial shape known to make
regular expressions backtrack (a long digit run after ``1.``, a whitespace run after a
coordinate, a run without ``@``, nested separators…) and a plain text for comparison;
each figure is the minimum of several repeats (the machine is shared). ``screen_worst_us``
is the largest; ``screen_growth_worst`` is the worst ratio of the cost at 2 KB over the cost
at 0.5 KB (4 is linear; quadratic patterns give ~16).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from bouquet.benchmarks.harness import BenchResult, print_result, write_json
from bouquet.core.events import MAX_CONTEXT_BYTES, personal_data_in
from bouquet.core.settings import Settings

#: (name, head, run, tail): a value is ``head + run * n + tail`` of the size asked.
SHAPES: tuple[tuple[str, str, str, str], ...] = (
    ("digits_after_dot", "1.", "1", "x"),
    ("spaces_after_coordinate", "1.1111", " ", "x"),
    ("tabs_after_coordinate", "1.1111", "\t", "x"),
    ("run_without_at", "a", "b", "@"),
    ("at_then_run_without_dot", "a@", "b", " "),
    ("dots_after_at", "a@", ".a", "1"),
    ("phone_like_run", "+", "1 ", "x"),
    ("repeated_coordinates", "", "1.1111 ", "x"),
    ("plain_text", "", "lorem ipsum ", ""),
)


def _value(head: str, run: str, tail: str, size: int) -> str:
    return head + run * max(1, (size - len(head) - len(tail)) // len(run)) + tail


def _cost_us(text: str, repeats: int, calls: int = 20) -> float:
    """Minimum over ``repeats`` of the mean time of one screen of ``{"note": text}``, µs."""
    value = {"note": text}
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(calls):
            personal_data_in(value)
        best = min(best, (time.perf_counter() - began) / calls)
    return best * 1e6


def run_benchmark(repeats: int = 15) -> BenchResult:
    size = MAX_CONTEXT_BYTES - len('{"note":""}')
    result = BenchResult("screen", params={"value_bytes": size, "repeats": repeats,
                                           "shapes": [s[0] for s in SHAPES]})
    worst, worst_growth = 0.0, 0.0
    for name, head, run, tail in SHAPES:
        full = _cost_us(_value(head, run, tail, size), repeats)
        quarter = _cost_us(_value(head, run, tail, size // 4), repeats)
        result.add(f"{name}_us", full, "µs")
        worst = max(worst, full)
        worst_growth = max(worst_growth, full / quarter)
    result.add("screen_worst_us", worst, "µs")
    result.add("screen_growth_worst", worst_growth, "ratio")
    result.notes.append("each figure: one screen of a context value of the largest allowed "
                        "size, minimum over repeats; growth = cost at 2 KB / cost at 0.5 KB "
                        "(4 = linear)")
    return result


def DEFAULT(settings: Settings) -> BenchResult:  # noqa: N802 - the harness contract name
    return run_benchmark()


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("screen")
    def screen_command(
        json_path: Path | None = typer.Option(None, "--json", help="Write contract JSON here."),
        repeats: int = typer.Option(15, min=1, help="Repeats per shape (minimum is kept)."),
    ) -> None:
        """Time the personal-data screen on adversarial context values (worst case, µs)."""
        result = run_benchmark(repeats=repeats)
        print_result(result)
        if json_path is not None:
            write_json(result, json_path)
