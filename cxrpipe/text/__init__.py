"""Stage one: the frozen language model, its loading, and the HDF5 cache of report hidden states."""
