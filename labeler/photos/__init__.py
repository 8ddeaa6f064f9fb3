"""From a stored photo value to an upright RGB array, one module per step, top to bottom:

``fetching`` (the entry points: ``load_photo``, ``load_bytes``, ``LoaderConfig``), ``stored``
(what a value holds and its base64 or hex text decoded), ``urls`` (the allow-list, redirects
and byte limit of a photo URL), ``files`` (files under the photo root, and files named on the
command line), ``network`` (every network wait of a fetch within one deadline),
``decode_worker`` (the killable decoder process) and ``decoding`` (bounded decoding).
May import ``labeler.core``.
"""
