"""End-to-end workflows built from the library's parts: the demo, the calibration search and the benchmark."""
