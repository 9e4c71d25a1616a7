"""EmoReason serve."""
