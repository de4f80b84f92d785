"""``medrega-gateway demo`` and the sample study it sends (not product code)."""
