"""The desktop console (PySide6). The only part of Redline that imports Qt.

`state` and `replay` hold the Qt-free model of a trial as the operator sees it; the widgets render
that model and send intents (launch, kill, pause) to `backend`, which runs them off the GUI thread.
"""
