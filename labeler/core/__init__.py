"""The vocabulary every layer shares: domain records, exit codes, safe text, default limits and
the packaged model's place. May import nothing of labeler.
"""
