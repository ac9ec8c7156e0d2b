"""What the console's widgets render and the intents they send, without Qt (napari's split): the
trial view state, replay, the containment checklist rows, and the backend that runs experiments and
talks to the core. Widgets in console/ui/ import this; nothing here imports Qt."""
