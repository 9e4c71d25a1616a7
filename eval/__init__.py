"""EmoReason eval."""
