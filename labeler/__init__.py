"""labeler: labels the dog breed of every photo in an animal-protection association's database."""

__version__ = "0.1.0"
