"""Training: the study's preprocessing, baseline CNN and transfer learning."""
