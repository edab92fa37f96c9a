"""The store: every change of an event's, a run's or a step's state."""
