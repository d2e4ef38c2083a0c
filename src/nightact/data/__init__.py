"""From class-named videos to batches: index and split, prepare the store, check it for leaks,
embed it with a frozen backbone, sample and augment, and stream batches to a model."""
