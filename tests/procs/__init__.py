"""Scripts run as real child processes by the signal and embedding tests."""
