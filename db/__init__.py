"""Numbered SQL migrations (yoyo) and the committed schema snapshot."""
