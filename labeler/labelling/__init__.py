"""One labelling pass: claiming batches, preparing photos on the decode pool, classifying, deciding
and saving through the ``Store`` seam. May import every layer below it; never the CLI.
"""
