"""Framework-free benchmark suites; every module here registers its benchmarks on import."""
