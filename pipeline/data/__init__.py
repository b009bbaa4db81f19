"""Text and the arrays made from it: tokeniser and vocabulary, the prepared splits on disk,
batches, the CSV reader, predict's inputs, and sources/ that download reads documents from."""
