"""EmoReason data_builders."""
