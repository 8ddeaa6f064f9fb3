"""From a stored photo value to an upright RGB array: fetching by kind (bytes, base64, files under
the photo root, URLs with their deadline), bounded decoding and the killable decoder process.
May import ``labeler.core``.
"""
