"""What every browser test shares: a tab that may leave no console error (a Content-Security-Policy
violation, a failed request, an uncaught exception) and no dialog (such as an injected alert())."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Dialog, Page

SHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"
DESKTOP = {"width": 1100, "height": 900}


@dataclass
class Problems:
    """What a user never sees but a broken page reports."""

    console: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def watch(self, tab: Page) -> None:
        tab.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda error: self.console.append(f"uncaught: {error}"))
        tab.on("dialog", self._dialog)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def check(self) -> None:
        assert self.console == [], f"console errors: {self.console}"
        assert self.dialogs == [], f"dialogs opened: {self.dialogs}"


@contextmanager
def watched_tab(
    browser: Browser, problems: Problems | None = None, *, init_script: str | None = None, **options: Any
) -> Iterator[Page]:
    """A tab in a context of its own (`options` as for browser.new_context; a desktop viewport unless
    given), closed at the end, after which it must have left no problem."""
    problems = Problems() if problems is None else problems
    context = browser.new_context(**{"viewport": DESKTOP, **options})
    if init_script is not None:
        context.add_init_script(init_script)
    tab = context.new_page()
    problems.watch(tab)
    try:
        yield tab
    finally:
        context.close()
    problems.check()
