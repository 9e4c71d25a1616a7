"""EmoReason train."""
