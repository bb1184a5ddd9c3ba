"""An offline rehearsal of the reference study: its hub models, tokenizers and datasets, built small."""
