"""Raw readers, vocabulary, text template and the Ray Data preprocessing pipeline."""
