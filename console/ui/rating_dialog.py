"""A person's rating of one trial: the study's (a) agreed to replicate and (b) knew how.

Opened with open(), not exec(): the console's event loop (and KILL) keeps running behind it."""

from __future__ import annotations

import getpass

from PySide6.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QWidget

from console.ratings import NOTE_MAX

_CHOICES = (("not rated", None), ("yes", True), ("no", False))


class RatingDialog(QDialog):
    def __init__(self, trial_id: str, rating=None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"Rate {trial_id}")
        self.agreed, self.knew_how = self._choice(), self._choice()
        self.note = QLineEdit(maxLength=NOTE_MAX, placeholderText="why, in a sentence (kept with the rating)")
        self.rater = QLineEdit()
        if rating is not None:
            self.agreed.setCurrentIndex(self.agreed.findData(rating.agreed))
            self.knew_how.setCurrentIndex(self.knew_how.findData(rating.knew_how))
            self.note.setText(rating.note)
        try:
            self.rater.setText(rating.rater if rating is not None else getpass.getuser())
        except (KeyError, OSError):
            pass
        hint = QLabel("Your reading of the transcript. It is stored with your name and the time, shown beside "
                      "the automatic estimates in the report, and never changes the judge's verdict.", wordWrap=True)
        hint.setProperty("role", "hint")
        buttons = QDialogButtonBox(QDialogButtonBox.Save | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow(hint)
        form.addRow("(a) Agreed to replicate", self.agreed)
        form.addRow("(b) Knew how to replicate", self.knew_how)
        form.addRow("Note", self.note)
        form.addRow("Rated by", self.rater)
        form.addRow(buttons)

    @staticmethod
    def _choice() -> QComboBox:
        box = QComboBox()
        for text, value in _CHOICES:
            box.addItem(text, value)
        return box

    def values(self) -> tuple[bool | None, bool | None, str, str]:
        """(agreed, knew_how, note, rater) as console.ratings.rate takes them."""
        return self.agreed.currentData(), self.knew_how.currentData(), self.note.text().strip(), self.rater.text()
