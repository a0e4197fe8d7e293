"""Code beside the flat top level: the GPT variant (`src/gpt/`) and its config (`src/configs/`)."""
