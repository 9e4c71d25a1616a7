"""The live server fixtures (`server`, `client`) live in tests/conftest.py: the reliability suite uses the same
one engine per session."""
