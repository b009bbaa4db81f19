"""The network and how it learns and persists: the classifier, the fast exact recurrence (csrc/),
the optimizer, checkpoints and a checkpoint loaded as a classifier."""
