"""Pieces shared by every token-mixing op: input checks, segment masks, platform dispatch."""
