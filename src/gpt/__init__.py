"""The GPT variant: a small decoder trained autoregressively on masked matrix + SEP + matrix."""
