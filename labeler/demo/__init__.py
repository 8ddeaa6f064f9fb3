"""The offline demo: a sample shelter database shaped like Animal Shelter Manager 3, labelled once.
The top layer: may import everything.
"""
