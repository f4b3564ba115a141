"""One config per experiment; the file name is the experiment name."""
