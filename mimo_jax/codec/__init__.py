"""The MiMo-Audio tokenizer: mel front end, encoder, RVQ, decoder, vocoder, streaming decode."""
