"""EmoReason core: media decoding, faces, the model, its processor and the output grammar."""
